"""Config section for the base model: which family, and where its weights, architecture and tokenizer come from."""

from __future__ import annotations

from pydantic import Field

from onetrainer.util.config.base import Section
from onetrainer.util.config.training import Precision
from onetrainer.util.config.types import ModelSource
from onetrainer.util.enums import ModelType, PredictionType


class ModelConfig(Section):
    type: ModelType = Field(ModelType.SD15, description="Model family: sd15, sd2 or sdxl.")
    base: ModelSource | None = Field(
        None,
        description="Base model: a diffusers folder, a .safetensors/.ckpt file, a hub id (org/name) or tiny:<family>.",
    )
    vae: ModelSource | None = Field(
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
        PredictionType.AUTO, description="epsilon or v_prediction; auto reads it from the model."
    )
    clip_skip: int = Field(
        1, ge=1, le=12, description="Text-encoder layer to use, counted from the end: 1 = last, 2 = penultimate."
    )
    dtype: Precision = Field(Precision.FP32, description="Data type the weights are loaded in: fp32, fp16 or bf16.")
