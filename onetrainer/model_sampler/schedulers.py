"""The sampling schedulers users can name, built from the model's own noise-schedule config.

Building from the model's config keeps what the weights were trained with (beta schedule,
prediction type, zero-terminal-SNR rescale); only the solver changes. Names are validated without
importing diffusers, so a typo fails before any model loads.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from onetrainer.util.errors import UserError
from onetrainer.util.suggest import did_you_mean

SCHEDULERS: dict[str, tuple[str, dict[str, Any]]] = {
    "ddim": ("DDIMScheduler", {}),
    "euler": ("EulerDiscreteScheduler", {}),
    "euler-a": ("EulerAncestralDiscreteScheduler", {}),
    "dpm++2m": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2}),
    "dpm++2m-karras": (
        "DPMSolverMultistepScheduler",
        {"algorithm_type": "dpmsolver++", "solver_order": 2, "use_karras_sigmas": True},
    ),
    "unipc": ("UniPCMultistepScheduler", {}),
    "ddpm": ("DDPMScheduler", {}),
}
"""Our name -> (diffusers class, settings on top of the model's config)."""

DISPLAY_NAMES = {
    "ddim": "DDIM",
    "euler": "Euler",
    "euler-a": "Euler a",
    "dpm++2m": "DPM++ 2M",
    "dpm++2m-karras": "DPM++ 2M Karras",
    "unipc": "UniPC",
    "ddpm": "DDPM",
}
"""A1111's spelling, used in the PNG `parameters` text that image browsers parse."""


def check_scheduler(name: str) -> str:
    key = name.strip().lower()
    if key not in SCHEDULERS:
        raise UserError(
            f"unknown scheduler {name!r}; {did_you_mean(key, list(SCHEDULERS))}".rstrip(" ;"),
            hint=f"Valid schedulers: {', '.join(SCHEDULERS)}.",
        )
    return key


def build_scheduler(name: str, base_config: Mapping[str, Any]) -> Any:
    import diffusers

    class_name, settings = SCHEDULERS[check_scheduler(name)]
    return getattr(diffusers, class_name).from_config(dict(base_config), **settings)
