"""Enumerations shared by the config schema and the modules that read it.

They are `str` enums so YAML holds plain lowercase words and pydantic reports the valid choices.
"""

from __future__ import annotations

from enum import Enum


class ModelType(str, Enum):
    """A model family. Each one plugs its modules into the registry under this name."""

    SD15 = "sd15"
    SD2 = "sd2"
    SDXL = "sdxl"


class PredictionType(str, Enum):
    """What the denoiser predicts. `auto` reads it from the model (scheduler config or file metadata)."""

    AUTO = "auto"
    EPSILON = "epsilon"
    V_PREDICTION = "v_prediction"


class TrainingMethod(str, Enum):
    LORA = "lora"
    FULL = "full"
    EMBEDDING = "embedding"


SAMPLING_SCHEDULERS = ("ddim", "euler", "euler-a", "dpm++2m", "dpm++2m-karras", "unipc", "ddpm")
"""The sampling schedulers a preview prompt or `onetrainer sample` may name.

`model_sampler.schedulers` builds each one with diffusers; the names live here so that the config
schema can check them without importing the sampler (a test keeps the two lists equal).
"""
