"""Config section for optimisation: seed, batch, length of the run, optimizer and precision."""

from __future__ import annotations

from enum import Enum

from pydantic import Field

from onetrainer.util.config.base import Section


class Optimizer(str, Enum):
    ADAMW = "adamw"
    ADAMW_8BIT = "adamw8bit"
    SGD = "sgd"
    ADAFACTOR = "adafactor"
    PRODIGY = "prodigy"
    SCHEDULE_FREE_ADAMW = "schedulefree_adamw"
    LION = "lion"
    CAME = "came"


class LrScheduler(str, Enum):
    CONSTANT = "constant"
    LINEAR = "linear"
    COSINE = "cosine"
    COSINE_WITH_RESTARTS = "cosine_with_restarts"
    POLYNOMIAL = "polynomial"


class Precision(str, Enum):
    FP32 = "fp32"
    FP16 = "fp16"
    BF16 = "bf16"


class TrainingConfig(Section):
    seed: int = Field(42, ge=0, description="Seed for every random choice (data order, augmentation, noise).")
    batch_size: int = Field(1, ge=1, le=4096, description="Images per optimizer step (before accumulation).")
    gradient_accumulation_steps: int = Field(1, ge=1, description="Batches accumulated per optimizer step.")
    epochs: int = Field(10, ge=1, description="Passes over the data.")
    max_steps: int | None = Field(
        None, ge=1, description="Stop after this many optimizer steps (overrides epochs)."
    )
    learning_rate: float = Field(1e-4, gt=0, le=10, description="Base learning rate.")
    optimizer: Optimizer = Field(Optimizer.ADAMW, description="Optimizer.")
    lr_scheduler: LrScheduler = Field(LrScheduler.CONSTANT, description="Learning-rate schedule.")
    warmup: float = Field(0, ge=0, description="Warm-up: steps if >= 1, else a fraction of all steps.")
    max_grad_norm: float | None = Field(1.0, gt=0, description="Clip the gradient norm to this (null: off).")
    precision: Precision = Field(Precision.FP32, description="Autocast precision for the forward pass.")
    gradient_checkpointing: bool = Field(False, description="Trade compute for memory in the denoiser.")
