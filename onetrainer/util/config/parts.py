"""Config section for the parts of a model: which train, how fast, in which dtype, for how long.

`parts` is keyed by the family's own component names (`unet`, `text_encoder`, `text_encoder_2`,
`transformer`, `vae`, ...), so one schema serves every family. Which keys a part accepts depends on
its role: every part has a `weight_dtype`; parts that can train (denoiser, text encoders) also `train`,
`learning_rate`, `stop_after` and LoRA targets; text encoders also `layer_skip` and `dropout`. `util.config.family`
fills in the family's parts and defaults once `model.type` is known and refuses names and keys the
family does not have.
"""

from __future__ import annotations

from enum import Enum

from pydantic import Field, field_validator

from onetrainer.util.config.adapters import LoraTargets, check_regex
from onetrainer.util.config.base import Section
from onetrainer.util.config.types import Cadence, CadenceField, CadenceUnit

TRAINABLE_KEYS = ("train", "learning_rate", "stop_after", "lora_targets", "lora_regex")
"""Keys only parts that can train accept (not the VAE)."""
TEXT_ENCODER_KEYS = ("layer_skip", "dropout")
"""Keys only text encoders accept."""
DENOISER_KEYS = ("offload_blocks",)
"""Keys only the denoiser accepts."""


class WeightDtype(str, Enum):
    """How a part's weights are stored (the names of `onetrainer.util.dtypes.WEIGHT_DTYPES`)."""

    FP32 = "fp32"
    BF16 = "bf16"
    FP16 = "fp16"
    FP8 = "fp8"
    INT8 = "int8"
    NF4 = "nf4"


class PartConfig(Section):
    train: bool | None = Field(
        None,
        description="Train this part: its LoRA (method: lora) or its weights (method: full); "
        "default: the family's (the denoiser trains, text encoders do not).",
    )
    learning_rate: float | None = Field(
        None, gt=0, le=10, description="This part's learning rate (default: training.learning_rate)."
    )
    weight_dtype: WeightDtype | None = Field(
        None,
        description="Storage of this part's weights: fp32, bf16 or fp16, or for frozen denoisers and text encoders "
        "the weight-only formats fp8, int8 or nf4 of their linear layers, computed in bf16 (default: model.dtype; "
        "fully trained parts: fp32, or bf16 with training.stochastic_rounding).",
    )
    stop_after: CadenceField = Field(
        Cadence(0, CadenceUnit.NEVER),
        description="Freeze this part (its weights or its LoRA) after this, e.g. '500 steps' or '3 epochs'.",
    )
    layer_skip: int = Field(
        0,
        ge=0,
        le=11,
        description="Text encoders: hidden layers skipped beyond the family's default (A1111's clip skip N "
        "is layer_skip N-1 on SD 1.x).",
    )
    dropout: float = Field(
        0.0,
        ge=0,
        le=1,
        description="Text encoders: the chance that a training sample's conditioning from this encoder is zeroed, "
        "drawn per sample and step (the SD 3 paper drops each of its three encoders independently, at 0.464).",
    )
    lora_targets: LoraTargets | None = Field(
        None, description="LoRA layers of this part: attn, attn-mlp or full (default: lora.targets)."
    )
    lora_regex: str | None = Field(
        None, description="LoRA layers of this part by module-path regex (default: lora.regex)."
    )
    offload_blocks: int | float = Field(
        0,
        ge=0,
        description="Denoiser: layer offloading: how many of its blocks wait in CPU memory between uses and are "
        "copied in ahead of use: a count (a whole number, e.g. 12) or a fraction (with a point, e.g. 0.5 or 1.0); "
        "needs training.gradient_checkpointing.",
    )

    @field_validator("stop_after")
    @classmethod
    def _steps_or_epochs(cls, value: Cadence) -> Cadence:
        if value.unit is CadenceUnit.MINUTE:
            raise ValueError("expected '<N> steps', '<N> epochs' or 'never'; minutes would make runs irreproducible")
        return value

    @field_validator("offload_blocks")
    @classmethod
    def _count_or_fraction(cls, value: int | float) -> int | float:
        if isinstance(value, float) and value > 1:
            raise ValueError("a fraction is at most 1.0; write a count of blocks without a point (e.g. 12)")
        return value

    @field_validator("lora_regex")
    @classmethod
    def _compiles(cls, value: str | None) -> str | None:
        return check_regex(value)
