"""The root of the training-run config: one typed object that every module reads from."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field, model_validator

from onetrainer.util.config.adapters import EmbeddingConfig, LoraConfig
from onetrainer.util.config.base import Section
from onetrainer.util.config.data import DataConfig
from onetrainer.util.config.loss import LossConfig, NoiseConfig
from onetrainer.util.config.model import ModelConfig
from onetrainer.util.config.output import LoggingConfig, SamplingConfig, SavingConfig
from onetrainer.util.config.parts import PartConfig
from onetrainer.util.config.training import TrainingConfig
from onetrainer.util.config.types import OutputPath
from onetrainer.util.enums import TrainingMethod


class TrainConfig(Section):
    """A complete training run. Precedence when loading: defaults < preset < file < overrides."""

    preset: str | None = Field(None, description="Name of the shipped preset this config starts from.")
    model: ModelConfig = Field(default_factory=ModelConfig, description="The base model.")
    method: TrainingMethod = Field(TrainingMethod.LORA, description="What to train: lora, full or embedding.")
    lora: LoraConfig = Field(default_factory=LoraConfig, description="LoRA settings (method: lora).")
    embedding: EmbeddingConfig = Field(
        default_factory=EmbeddingConfig, description="Embedding settings (method: embedding)."
    )
    data: DataConfig = Field(default_factory=DataConfig, description="Training images.")
    parts: dict[str, PartConfig] = Field(
        default_factory=dict,
        description="The model's parts by their names (unet, text_encoder, ...): which train, their learning rates, "
        "weight dtypes, LoRA targets and when they stop.",
    )
    noise: NoiseConfig = Field(default_factory=NoiseConfig, description="Noise and timestep sampling.")
    loss: LossConfig = Field(default_factory=LossConfig, description="Loss function, weighting and masks.")
    training: TrainingConfig = Field(default_factory=TrainingConfig, description="Optimisation.")
    sampling: SamplingConfig = Field(default_factory=SamplingConfig, description="Preview samples.")
    saving: SavingConfig = Field(default_factory=SavingConfig, description="The trained output.")
    logging: LoggingConfig = Field(default_factory=LoggingConfig, description="Logs and metrics.")
    workspace: OutputPath = Field(Path("workspace/run"), description="Run folder: backups, samples, logs.")

    @model_validator(mode="before")
    @classmethod
    def _family_defaults(cls, data: Any) -> Any:
        from onetrainer.util.config.family import fill_family_defaults

        return fill_family_defaults(data) if isinstance(data, dict) else data

    @model_validator(mode="after")
    def _fits_the_family(self) -> TrainConfig:
        """Keys the family does not have or use are errors (raised as `ConfigError`, with key paths)."""
        from onetrainer.util.config.family import family_problems
        from onetrainer.util.errors import ConfigError

        problems = family_problems(self)
        if problems:
            raise ConfigError(problems)
        return self
