"""Config sections for what a run produces: preview samples, saved models and logs."""

from __future__ import annotations

from enum import Enum

from pydantic import Field

from onetrainer.util.config.base import Section
from onetrainer.util.config.types import Cadence, CadenceField, CadenceUnit, OutputPath


class SamplePrompt(Section):
    prompt: str = Field(description="What to draw.")
    negative_prompt: str = Field("", description="What to steer away from.")
    seed: int = Field(42, ge=0, description="Noise seed, so previews are comparable across the run.")
    steps: int = Field(20, ge=1, le=1000, description="Denoising steps.")
    cfg: float = Field(7.0, ge=0, description="Classifier-free guidance scale.")
    width: int | None = Field(None, ge=8, description="Image width (default: the training resolution).")
    height: int | None = Field(None, ge=8, description="Image height (default: the training resolution).")


class SamplingConfig(Section):
    every: CadenceField = Field(
        Cadence(0, CadenceUnit.NEVER), description="Preview cadence, e.g. '250 steps'."
    )
    prompts: list[SamplePrompt] = Field(default_factory=list, description="Preview prompts.")


class SaveFormat(str, Enum):
    AUTO = "auto"
    DIFFUSERS = "diffusers"
    SINGLE_FILE = "single-file"
    KOHYA = "kohya"
    PEFT = "peft"
    A1111 = "a1111"


class SaveDtype(str, Enum):
    FP32 = "fp32"
    FP16 = "fp16"
    BF16 = "bf16"


class SavingConfig(Section):
    output: OutputPath = Field("output/model.safetensors", description="Where the final model is written.")
    format: SaveFormat = Field(
        SaveFormat.AUTO,
        description="Output format; auto = kohya for LoRA, a1111 for embeddings, by file suffix for full models.",
    )
    dtype: SaveDtype = Field(SaveDtype.FP16, description="Data type of the saved weights.")


class LoggingConfig(Section):
    tensorboard: bool = Field(True, description="Write TensorBoard logs to the workspace.")
