"""Config section for optimisation: seed, batch, length of the run, optimizer, schedule, precision, EMA."""

from __future__ import annotations

import math
import re
from enum import Enum
from typing import Annotated

from pydantic import BeforeValidator, Field, field_validator

from onetrainer.util.config.base import Section


class Optimizer(str, Enum):
    ADAMW = "adamw"
    ADAMW_8BIT = "adamw8bit"
    ADAMW_8BIT_AO = "adamw8bit_ao"
    SGD = "sgd"
    ADAFACTOR = "adafactor"
    PRODIGY = "prodigy"
    SCHEDULE_FREE_ADAMW = "schedulefree_adamw"
    LION = "lion"
    CAME = "came"


FUSED_ON_CUDA = (Optimizer.ADAMW, Optimizer.SGD)
"""torch optimizers built with `fused=True` on CUDA (unless `optimizer_args` says otherwise): one kernel per
parameter group and dtype instead of several per tensor, and the `found_inf` skip that lets the NaN guard decide
on the device (`trainer.readback`). Elsewhere torch's default applies (`foreach` on other accelerators)."""


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


class DistributedMode(str, Enum):
    """How several ranks (torchrun processes) share the training: each holds every trained tensor (ddp), or
    a shard of them (fsdp, for full fine-tunes too large for one GPU)."""

    DDP = "ddp"
    FSDP = "fsdp"


class EmaDevice(str, Enum):
    TRAIN = "train"
    CPU = "cpu"


_INTEGER = re.compile(r"[-+]?\d+")
_DECIMAL = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def _as_number(item: object) -> object:
    """A number written as text read as the number: YAML 1.1 (PyYAML) reads `1e-6`, without a dot, as a
    string, which would reach the optimizer as one."""
    if isinstance(item, str):
        text = item.strip()
        if _INTEGER.fullmatch(text):
            return int(text)
        if _DECIMAL.fullmatch(text):
            return float(text)
    return item


def _finite_argument(value: object) -> object:
    """Numbers written as text read as numbers; nan/inf rejected before the union tries each member type
    (which would report five errors)."""
    value = [_as_number(item) for item in value] if isinstance(value, list) else _as_number(value)
    values = value if isinstance(value, list) else [value]
    if any(isinstance(item, float) and not math.isfinite(item) for item in values):
        raise ValueError("must be a finite number, not nan or infinity")
    return value


def _thread_setting(value: object) -> object:
    if isinstance(value, str) and value.strip().lower() == "auto":
        return "auto"
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value.strip())
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError("expected auto or a whole number of threads of at least 1")
    return value


ThreadSetting = Annotated[int | str, BeforeValidator(_thread_setting)]
"""`auto` or a count; see `onetrainer.util.threads` for how auto chooses and what overrides it."""

MAX_READ_BACK_LAG = 8


def _lag_setting(value: object) -> object:
    if isinstance(value, str) and value.strip().lower() == "auto":
        return "auto"
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value.strip())
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_READ_BACK_LAG:
        raise ValueError(f"expected auto or a whole number of steps from 0 to {MAX_READ_BACK_LAG}")
    return value


LagSetting = Annotated[int | str, BeforeValidator(_lag_setting)]
"""`auto` or a number of steps; see `onetrainer.trainer.readback` for what auto chooses."""

OptimizerArg = Annotated[bool | int | float | str | list[float] | None, BeforeValidator(_finite_argument)]


class EmaConfig(Section):
    enabled: bool = Field(False, description="Keep an exponential moving average of the trained weights.")
    decay: float = Field(0.999, gt=0, lt=1, description="Share of the old average kept at each update.")
    update_every: int = Field(1, ge=1, description="Update the average every N optimizer steps.")
    warmup: bool = Field(
        True,
        description="Start with a short memory: the update after optimizer step s keeps min(decay, s / (9 + s)) of "
        "the average, "
        "as diffusers and OneTrainer do (false: decay from the first update, so early weights linger).",
    )
    device: EmaDevice = Field(
        EmaDevice.TRAIN,
        description="Where the average lives: train (beside the weights, fast; CPU memory for offloaded blocks) or "
        "cpu (saves GPU memory).",
    )
    for_samples: bool = Field(True, description="Draw preview samples with the averaged weights.")
    for_saves: bool = Field(True, description="Write the averaged weights to saved models.")


class TrainingConfig(Section):
    seed: int = Field(42, ge=0, description="Seed for every random choice (data order, augmentation, noise).")
    batch_size: int = Field(
        1,
        ge=1,
        le=4096,
        description="Images per batch on each device (the effective batch is devices × batch × accumulation).",
    )
    gradient_accumulation_steps: int = Field(1, ge=1, description="Batches accumulated per optimizer step.")
    epochs: int = Field(10, ge=1, description="Passes over the data.")
    max_steps: int | None = Field(None, ge=1, description="Stop after this many optimizer steps (overrides epochs).")
    learning_rate: float = Field(
        1e-4, gt=0, le=10, description="Base learning rate (parts.<name>.learning_rate overrides it per part)."
    )
    optimizer: Optimizer = Field(Optimizer.ADAMW, description="Optimizer.")
    weight_decay: float = Field(1e-2, ge=0, description="Weight decay (decoupled for the AdamW family).")
    betas: list[float] | None = Field(
        None, min_length=2, max_length=3, description="Optimizer betas (null: the optimizer's own default)."
    )
    eps: float | None = Field(None, gt=0, description="Optimizer epsilon (null: the optimizer's own default).")
    momentum: float = Field(0.0, ge=0, lt=1, description="SGD momentum.")
    optimizer_args: dict[str, OptimizerArg] = Field(
        default_factory=dict, description="Further keyword arguments for the optimizer, e.g. {d_coef: 0.5}."
    )
    lr_scheduler: LrScheduler = Field(LrScheduler.CONSTANT, description="Learning-rate schedule.")
    warmup: float = Field(0, ge=0, description="Warm-up: steps if >= 1, else a fraction of all steps.")
    lr_cycles: int = Field(1, ge=1, description="Number of cosine cycles (cosine_with_restarts).")
    lr_power: float = Field(1.0, gt=0, description="Exponent of the polynomial schedule (1 = linear).")
    lr_min_factor: float = Field(
        0.0, ge=0, le=1, description="Floor of the decaying schedules, as a fraction of the learning rate."
    )
    max_grad_norm: float | None = Field(1.0, gt=0, description="Clip the gradient norm to this (null: off).")
    precision: Precision = Field(Precision.FP32, description="Autocast precision for the forward pass.")
    gradient_checkpointing: bool = Field(False, description="Trade compute for memory in the denoiser.")
    fused_backward: bool = Field(
        False,
        description="Update each trained tensor as soon as its gradient is ready, so no full set of gradients is "
        "held; needs gradient_accumulation_steps 1, max_grad_norm null, precision bf16 or fp32 and an optimizer "
        "that updates tensors independently (adamw, adamw8bit, adamw8bit_ao, adafactor, sgd).",
    )
    stochastic_rounding: bool = Field(
        False,
        description="Compute the update of bf16 trained weights in fp32 and round it stochastically (unbiased), so "
        "small updates are not lost; lets a full fine-tune keep weights in bf16 (parts.<name>.weight_dtype: bf16).",
    )
    optimizer_offload: bool = Field(
        False,
        description="Keep the optimizer states in CPU memory and update the weights there, one tensor at a time "
        "(gradients are copied out, new weights back).",
    )
    activation_offload: bool = Field(
        False,
        description="Keep the activations the backward pass needs (with checkpointing: each checkpointed block's "
        "inputs) in CPU memory until then; needs gradient_checkpointing.",
    )
    compile: bool = Field(
        False,
        description="torch.compile the denoiser's repeated blocks: the first step compiles (minutes, cached for "
        "later runs), the steps after run faster on a GPU.",
    )
    channels_last: bool = Field(
        False, description="Keep the denoiser's convolution weights channels-last (NHWC), as GPU convolutions prefer."
    )
    read_back_lag: LagSetting = Field(
        "auto",
        description="Steps the loss and the finite check may be read behind the device: auto (1 on CUDA where the "
        "optimizer can skip a step on the device, else 0), or 0 (wait for every step) to 8.",
    )
    device: str = Field("auto", description="Training device: auto (CUDA when available), cpu, cuda or cuda:N.")
    threads: ThreadSetting = Field(
        "auto",
        description="CPU threads for torch's operators: auto (usable cores minus data workers minus one) or a "
        "number; the ONETRAINER_THREADS environment variable overrides it.",
    )
    ema: EmaConfig = Field(default_factory=EmaConfig, description="Exponential moving average of the weights.")
    distributed: DistributedMode = Field(
        DistributedMode.DDP,
        description="With several processes (torchrun, --gpus): ddp, every GPU holds the trained weights; fsdp, "
        "each holds a shard of a full fine-tune's weights, gradients and optimizer state.",
    )

    @field_validator("device")
    @classmethod
    def _known_device(cls, value: str) -> str:
        text = value.strip().lower()
        if text in ("auto", "cpu", "cuda", "mps") or (text.startswith("cuda:") and text[5:].isdigit()):
            return text
        raise ValueError("expected auto, cpu, cuda, cuda:N or mps")
