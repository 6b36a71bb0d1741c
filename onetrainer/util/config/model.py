"""Config section for the base model: which family, and where its weights come from."""

from __future__ import annotations

from pydantic import Field

from onetrainer.util.config.base import Section
from onetrainer.util.config.types import ModelSource
from onetrainer.util.enums import ModelType


class ModelConfig(Section):
    type: ModelType = Field(ModelType.SD15, description="Model family: sd15, sd2 or sdxl.")
    base: ModelSource | None = Field(
        None, description="Base model: a diffusers folder, a .safetensors/.ckpt file, or a hub id (org/name)."
    )
