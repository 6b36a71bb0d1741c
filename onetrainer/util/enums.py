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
