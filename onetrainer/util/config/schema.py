"""The root of the training-run config: one typed object that every module reads from."""

from __future__ import annotations

from pydantic import Field

from onetrainer.util.config.adapters import EmbeddingConfig, LoraConfig
from onetrainer.util.config.base import Section
from onetrainer.util.config.data import DataConfig
from onetrainer.util.config.loss import LossConfig, NoiseConfig
from onetrainer.util.config.model import ModelConfig
from onetrainer.util.config.output import LoggingConfig, SamplingConfig, SavingConfig
from onetrainer.util.config.parts import PartsConfig
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
    parts: PartsConfig = Field(default_factory=PartsConfig, description="Which model parts train, and until when.")
    noise: NoiseConfig = Field(default_factory=NoiseConfig, description="Noise and timestep sampling.")
    loss: LossConfig = Field(default_factory=LossConfig, description="Loss function, weighting and masks.")
    training: TrainingConfig = Field(default_factory=TrainingConfig, description="Optimisation.")
    sampling: SamplingConfig = Field(default_factory=SamplingConfig, description="Preview samples.")
    saving: SavingConfig = Field(default_factory=SavingConfig, description="The trained output.")
    logging: LoggingConfig = Field(default_factory=LoggingConfig, description="Logs and metrics.")
    workspace: OutputPath = Field("workspace/run", description="Run folder: backups, samples, logs.")
