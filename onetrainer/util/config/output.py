"""Config sections for what a run produces: preview samples, saved models and logs."""

from __future__ import annotations

from enum import Enum
from pathlib import Path

from pydantic import Field, field_validator

from onetrainer.util.config.base import Section
from onetrainer.util.config.types import Cadence, CadenceField, CadenceUnit, OutputPath
from onetrainer.util.enums import SAMPLING_SCHEDULERS
from onetrainer.util.suggest import did_you_mean

SIZE_STEP = 8
"""Preview sides must be multiples of the VAE's downscale factor, 8 in every supported family, and the
sampler refuses any other size, so the schema refuses it first, with the key path; a family whose
denoiser patches the latents needs more (16 for 2x2 patches), which the cross-section check asks."""


class SamplePrompt(Section):
    prompt: str = Field(description="What to draw.")
    negative_prompt: str = Field("", description="What to steer away from.")
    seed: int = Field(42, ge=0, description="Noise seed, so previews are comparable across the run.")
    steps: int = Field(20, ge=1, le=1000, description="Denoising steps.")
    cfg: float = Field(7.0, ge=0, description="Classifier-free guidance scale.")
    width: int | None = Field(None, ge=8, description="Image width (default: the training resolution).")
    height: int | None = Field(None, ge=8, description="Image height (default: the training resolution).")
    scheduler: str = Field("ddim", description="Sampling scheduler: " + ", ".join(SAMPLING_SCHEDULERS) + ".")

    @field_validator("width", "height")
    @classmethod
    def _multiple_of_step(cls, value: int | None) -> int | None:
        if value is not None and value % SIZE_STEP:
            below = value // SIZE_STEP * SIZE_STEP
            raise ValueError(f"must be a multiple of {SIZE_STEP} (the VAE's scale): {below} or {below + SIZE_STEP}?")
        return value

    @field_validator("scheduler")
    @classmethod
    def _known_scheduler(cls, value: str) -> str:
        name = value.strip().lower()
        if name not in SAMPLING_SCHEDULERS:
            suggestion = did_you_mean(name, SAMPLING_SCHEDULERS)
            raise ValueError(f"unknown scheduler; {suggestion}valid: {', '.join(SAMPLING_SCHEDULERS)}")
        return name


class SamplingConfig(Section):
    every: CadenceField = Field(Cadence(0, CadenceUnit.NEVER), description="Preview cadence, e.g. '250 steps'.")
    prompts: list[SamplePrompt] = Field(default_factory=list, description="Preview prompts.")
    before_training: bool = Field(False, description="Also draw the previews once before the first step.")
    to_tensorboard: bool = Field(True, description="Add the previews to the TensorBoard log too.")


class SaveFormat(str, Enum):
    AUTO = "auto"
    DIFFUSERS = "diffusers"
    SINGLE_FILE = "single-file"
    KOHYA = "kohya"
    PEFT = "peft"
    A1111 = "a1111"


def dora_on_output(fmt: SaveFormat | str) -> bool:
    """Whether a DoRA saved as `fmt` learns its magnitudes per output row (peft's layout) rather than per
    input column (the kohya layout the UIs compute); see `model.adapters.dora`."""
    return SaveFormat(getattr(fmt, "value", fmt)) is SaveFormat.PEFT


class SaveDtype(str, Enum):
    FP32 = "fp32"
    FP16 = "fp16"
    BF16 = "bf16"


class SavingConfig(Section):
    output: OutputPath = Field(Path("output/model.safetensors"), description="Where the final model is written.")
    format: SaveFormat = Field(
        SaveFormat.AUTO,
        description="Output format; auto = the family's LoRA layout (kohya; SD 3.x: peft, kohya when T5 trains), a1111 "
        "for embeddings, by file suffix for full models.",
    )
    dtype: SaveDtype = Field(SaveDtype.FP16, description="Data type of the saved weights.")
    overwrite: bool = Field(False, description="Replace an existing output; otherwise a run refuses to start.")
    every: CadenceField = Field(
        Cadence(0, CadenceUnit.NEVER), description="Intermediate saves into the workspace, e.g. '1 epoch'."
    )
    backup_every: CadenceField = Field(
        Cadence(30, CadenceUnit.MINUTE), description="Backups (everything needed to resume), e.g. '500 steps'."
    )
    backup_keep_last: int = Field(3, ge=1, description="Rolling backups: how many of the newest to keep.")


class LoggingConfig(Section):
    tensorboard: bool = Field(True, description="Write TensorBoard logs to the workspace.")
    validate_every: CadenceField = Field(
        Cadence(0, CadenceUnit.NEVER), description="Validation loss on the validation concepts, e.g. '1 epoch'."
    )
