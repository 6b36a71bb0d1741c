"""Config sections for the adapters trained on a base model: LoRA and textual-inversion embeddings."""

from __future__ import annotations

from pydantic import Field

from onetrainer.util.config.base import Section


class LoraConfig(Section):
    rank: int = Field(16, ge=1, le=1024, description="LoRA rank (dimension of the low-rank update).")
    alpha: float = Field(16.0, gt=0, description="LoRA alpha; the update is scaled by alpha / rank.")


class EmbeddingConfig(Section):
    placeholder: str = Field(
        "<embedding>", min_length=1, description="The token written in captions where the embedding goes."
    )
    vectors: int = Field(1, ge=1, le=75, description="Number of token vectors the embedding learns.")
    init_text: str = Field("*", description="Text whose token embeddings initialise the vectors.")
