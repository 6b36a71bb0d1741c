"""Config section for the base model: which family, and where its weights, architecture and tokenizer come from."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from onetrainer.util.config.base import Section
from onetrainer.util.config.training import Precision
from onetrainer.util.config.types import BaseSource, ModelSource, VaeSource
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
