"""Enumerations shared by the config schema and the modules that read it.

They are `str` enums so YAML holds plain lowercase words and pydantic reports the valid choices.
"""

from __future__ import annotations

from enum import Enum


class PredictionType(str, Enum):
    """What the denoiser predicts. `auto` reads it from the model (scheduler config or file metadata)."""

    AUTO = "auto"
    EPSILON = "epsilon"
    V_PREDICTION = "v_prediction"
    SAMPLE = "sample"


class TrainingMethod(str, Enum):
    LORA = "lora"
    FULL = "full"
    EMBEDDING = "embedding"


SCHEDULERS_BY_OBJECTIVE: dict[str, tuple[str, ...]] = {
    "ddpm": ("ddim", "euler", "euler-a", "dpm++2m", "dpm++2m-karras", "unipc", "ddpm"),
    "flow-matching": ("euler", "dpm++2m", "unipc", "deis"),
}
"""The sampling schedulers a preview prompt or `onetrainer sample` may name, per training objective (the
values of `util.family.Objective`).

`model_sampler.schedulers` builds each one with diffusers; the names live here so that the config
schema can check them without importing the sampler (a test keeps the tables equal).
"""
SAMPLING_SCHEDULERS = tuple(dict.fromkeys(name for names in SCHEDULERS_BY_OBJECTIVE.values() for name in names))
"""Every name of any objective: what the schema accepts before it knows the model's family."""
PREVIEW_SCHEDULERS = {"ddpm": "ddim", "flow-matching": "euler"}
"""The scheduler of a preview prompt that names none, per objective."""
