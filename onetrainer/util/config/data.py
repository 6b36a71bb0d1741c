"""Config section for the training data: concepts (image folders) and how they become batches."""

from __future__ import annotations

from pydantic import Field

from onetrainer.util.config.base import Section
from onetrainer.util.config.types import ExistingDir


class ConceptConfig(Section):
    path: ExistingDir = Field(description="Folder of images (with name.txt captions beside them).")
    enabled: bool = Field(
        True, description="Set false to keep the concept in the config but not train on it."
    )
    repeats: float = Field(1.0, gt=0, description="How many times per epoch each image is used (0.5 = half).")


class DataConfig(Section):
    resolution: int = Field(
        512, ge=64, le=8192, description="Target side length; buckets keep its pixel count."
    )
    concepts: list[ConceptConfig] = Field(default_factory=list, description="The image folders to train on.")
