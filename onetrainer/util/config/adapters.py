"""Config sections for the adapters trained on a base model: LoRA and textual-inversion embeddings."""

from __future__ import annotations

import re
from enum import Enum

from pydantic import Field, field_validator, model_validator

from onetrainer.util.config.base import Section
from onetrainer.util.config.types import ExistingPath


class LoraType(str, Enum):
    LORA = "lora"
    DORA = "dora"
    LOHA = "loha"
    LOKR = "lokr"


class LoraTargets(str, Enum):
    """Which layers get adapters; each preset includes the one before it."""

    ATTN = "attn"
    ATTN_MLP = "attn-mlp"
    FULL = "full"


class LoraConfig(Section):
    type: LoraType = Field(
        LoraType.LORA, description="Adapter kind: lora, dora (weight-decomposed), loha or lokr (LyCORIS)."
    )
    rank: int = Field(16, ge=1, le=1024, description="LoRA rank (dimension of the low-rank update).")
    alpha: float = Field(16.0, gt=0, description="LoRA alpha; the update is scaled by alpha / rank.")
    dropout: float = Field(
        0.0,
        ge=0,
        lt=1,
        description="Dropout inside the adapter (input dropout for lora/dora, rank dropout for loha/lokr).",
    )
    targets: LoraTargets = Field(
        LoraTargets.ATTN_MLP,
        description="Layers to adapt on every part that trains (parts.<name>.lora_targets overrides it): attn "
        "(attention projections), attn-mlp (+ feed-forward and transformer in/out projections), full (+ resnet "
        "and resampling convolutions).",
    )
    regex: str | None = Field(
        None,
        description="When set, adapt exactly the layers whose module path matches this regex (re.search), "
        "instead of the `targets` preset.",
    )
    init_from: ExistingPath | None = Field(
        None, description="A LoRA file (kohya or peft layout) to continue training from."
    )

    @field_validator("regex")
    @classmethod
    def _compiles(cls, value: str | None) -> str | None:
        return check_regex(value)


def check_regex(value: str | None) -> str | None:
    """A field validator's body: the value if it compiles as a regular expression."""
    if value is None:
        return None
    try:
        re.compile(value)
    except re.error as exc:
        raise ValueError(f"not a valid regular expression: {exc}") from None
    return value


class AdditionalEmbeddingConfig(Section):
    placeholder: str = Field(min_length=1, description="The token written in captions where the embedding goes.")
    vectors: int = Field(1, ge=1, le=75, description="Number of token vectors the embedding learns.")
    init_text: str = Field("*", description="Text whose token embeddings initialise the vectors.")
    init_from: ExistingPath | None = Field(
        None, description="An embedding file (A1111 or diffusers) to start from; it sets the vector count."
    )
    train: bool = Field(True, description="Train it; false keeps it fixed (a finished embedding used in captions).")


class EmbeddingConfig(Section):
    placeholder: str = Field(
        "<embedding>", min_length=1, description="The token written in captions where the embedding goes."
    )
    vectors: int = Field(1, ge=1, le=75, description="Number of token vectors the embedding learns.")
    init_text: str = Field("*", description="Text whose token embeddings initialise the vectors.")
    init_from: ExistingPath | None = Field(
        None, description="An embedding file (A1111 or diffusers) to continue training from; it sets the vector count."
    )
    learning_rate: float | None = Field(
        None, gt=0, le=10, description="Learning rate of the trained embeddings (default: training.learning_rate)."
    )
    additional: list[AdditionalEmbeddingConfig] = Field(
        default_factory=list,
        description="More embeddings, trained beside any method (lora, full or embedding) or kept fixed.",
    )

    @model_validator(mode="after")
    def _unique_placeholders(self) -> EmbeddingConfig:
        seen = {self.placeholder}
        for extra in self.additional:
            if extra.placeholder in seen:
                raise ValueError(f"placeholder {extra.placeholder!r} is used by two embeddings")
            seen.add(extra.placeholder)
        return self
