"""Config section for the trainable parts of a model: which train, and for how long.

Every family has a denoiser and text encoders. Per-part learning rates live in
`training.learning_rates`, keyed by the same part names (`unet`, `text_encoder`, `embeddings`).
"""

from __future__ import annotations

from pydantic import Field, field_validator

from onetrainer.util.config.base import Section
from onetrainer.util.config.types import Cadence, CadenceField, CadenceUnit


class UnetPartConfig(Section):
    train: bool = Field(True, description="Train the UNet's weights (method: full).")


class TextEncoderPartConfig(Section):
    train: bool = Field(False, description="Train the text encoder's weights (method: full).")
    stop_after: CadenceField = Field(
        Cadence(0, CadenceUnit.NEVER),
        description="Freeze the text encoder (its weights or its LoRA) after this, e.g. '500 steps' or '3 epochs'.",
    )

    @field_validator("stop_after")
    @classmethod
    def _steps_or_epochs(cls, value: Cadence) -> Cadence:
        if value.unit is CadenceUnit.MINUTE:
            raise ValueError("expected '<N> steps', '<N> epochs' or 'never'; minutes would make runs irreproducible")
        return value


class PartsConfig(Section):
    unet: UnetPartConfig = Field(default_factory=UnetPartConfig, description="The denoiser (UNet).")
    text_encoder: TextEncoderPartConfig = Field(default_factory=TextEncoderPartConfig, description="The text encoder.")
