"""Config section for the base model: which family, and where its weights, architecture and tokenizer come from."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field, ValidationInfo, field_validator

from onetrainer.util.config.base import Section
from onetrainer.util.config.training import Precision
from onetrainer.util.config.types import TINY_PREFIX, WEIGHT_SUFFIXES, BaseSource, ModelSource, VaeSource
from onetrainer.util.enums import PredictionType


def _default_type() -> str:
    from onetrainer.util.family import default_family

    return default_family().name


class ModelConfig(Section):
    type: str = Field(
        default_factory=_default_type,
        description="Model family: a registered model type (an unknown one is refused with the list of them); "
        "default: the family registered as the default.",
    )
    base: BaseSource | None = Field(
        None,
        description="Base model: a diffusers folder, a .safetensors/.ckpt file, a hub id (org/name) or tiny:<family>.",
    )
    vae: VaeSource | None = Field(
        None, description="Replace the base model's VAE: a diffusers folder, a .safetensors file or a hub id."
    )
    tokenizer: ModelSource | None = Field(
        None,
        description="Tokenizer of a single-file base (folder or hub id); default: config source, then HF cache.",
    )
    config: ModelSource | None = Field(
        None,
        description="Architecture for a single-file base: a diffusers folder or hub id; default: the configs shipped "
        "with onetrainer.",
    )
    prediction_type: PredictionType = Field(
        PredictionType.AUTO,
        description="DDPM models: epsilon, v_prediction or sample; auto reads it from the model.",
    )
    dtype: Precision = Field(Precision.FP32, description="Data type the weights are loaded in: fp32, fp16 or bf16.")
    options: dict[str, Any] = Field(
        default_factory=dict, description="Options of the model family (see its documentation); most have none."
    )

    @field_validator("tokenizer", "config")
    @classmethod
    def _for_a_single_file(cls, value: str | None, info: ValidationInfo) -> str | None:
        """They describe a single-file base, the only one without its own architecture and tokenizers; with
        another base they would be ignored without a word."""
        base = info.data.get("base")
        if value is None or base is None or _single_file(str(base)):
            return value
        what = "a built-in tiny model" if str(base).startswith(TINY_PREFIX) else "a diffusers folder or hub id"
        raise ValueError(f"describes a single-file base; model.base {base} is {what}, which brings its own")


def _single_file(base: str) -> bool:
    """Whether `base` names a weights file (one that does not exist yet, in a config read without its paths)."""
    if base.startswith(TINY_PREFIX):
        return False
    path = Path(base).expanduser()
    return path.is_file() or (not path.exists() and base.lower().endswith(WEIGHT_SUFFIXES))
