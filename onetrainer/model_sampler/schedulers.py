"""The sampling schedulers users can name, per training objective, built from the model's own schedule config.

Building from the model's config keeps what the weights were trained with (beta schedule,
prediction type, zero-terminal-SNR rescale; a flow-matching model's shift); only the solver changes.
Which names are valid depends on the family's objective: DDPM models sample with the discrete-time
solvers, flow-matching models with diffusers' flow-matching Euler and the multistep solvers run on
flow sigmas. Names are validated without importing diffusers, so a typo fails before any model loads.

A multistep solver on flow sigmas takes its shift as `flow_shift`, and when a pipeline passes the
resolution-dependent `mu` (some pipelines always do), it uses e^mu and requires `use_dynamic_shifting`. A
model with a fixed shift s therefore gets a "dynamic" one that is constant: mu = ln s at every size
(`base_shift` = `max_shift` = ln s), which is the same schedule.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from onetrainer.util.enums import SAMPLING_SCHEDULERS
from onetrainer.util.errors import UserError
from onetrainer.util.family import Objective
from onetrainer.util.suggest import did_you_mean

FLOW = {"use_flow_sigmas": True, "prediction_type": "flow_prediction"}
SCHEDULERS: dict[Objective, dict[str, tuple[str, dict[str, Any]]]] = {
    Objective.DDPM: {
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
    },
    Objective.FLOW_MATCHING: {
        "euler": ("FlowMatchEulerDiscreteScheduler", {}),
        "dpm++2m": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2, **FLOW}),
        "unipc": ("UniPCMultistepScheduler", FLOW),
        "deis": ("DEISMultistepScheduler", FLOW),
    },
}
"""Objective -> our name -> (diffusers class, settings on top of the model's config)."""

DISPLAY_NAMES = {
    "ddim": "DDIM",
    "euler": "Euler",
    "euler-a": "Euler a",
    "dpm++2m": "DPM++ 2M",
    "dpm++2m-karras": "DPM++ 2M Karras",
    "unipc": "UniPC",
    "ddpm": "DDPM",
    "deis": "DEIS",
}
"""A1111's spelling, used in the PNG `parameters` text that image browsers parse."""


def scheduler_names(objective: Objective | None = None) -> tuple[str, ...]:
    """The names valid for models of `objective` (None: for any model)."""
    if objective is not None:
        return tuple(SCHEDULERS[objective])
    return tuple(SAMPLING_SCHEDULERS)


def check_scheduler(name: str, objective: Objective | None = None) -> str:
    """The normalised name, or a user error listing the valid ones (for `objective`, when given)."""
    key = name.strip().lower()
    valid = scheduler_names(objective)
    if key not in valid:
        known = key in scheduler_names()
        what = "flow-matching" if objective is Objective.FLOW_MATCHING else "DDPM"
        reason = f"{name!r} is not a {what} scheduler" if known else f"unknown scheduler {name!r}"
        raise UserError(
            f"{reason}; {did_you_mean(key, list(valid))}".rstrip(" ;"),
            hint=f"Valid schedulers: {', '.join(valid)}.",
        )
    return key


def build_scheduler(name: str, base_config: Mapping[str, Any], objective: Objective = Objective.DDPM) -> Any:
    import diffusers

    class_name, settings = SCHEDULERS[objective][check_scheduler(name, objective)]
    config = dict(base_config)
    if not settings.get("use_flow_sigmas"):
        return getattr(diffusers, class_name).from_config(config, **settings)
    config.update(_flow_shift(config))
    # The shift anchors stay in the config on purpose (the pipeline reads them), which diffusers reports
    # as unexpected keys of the solver.
    verbosity = diffusers.utils.logging.get_verbosity()
    diffusers.utils.logging.set_verbosity_error()
    try:
        return getattr(diffusers, class_name).from_config(config, **settings)
    finally:
        diffusers.utils.logging.set_verbosity(verbosity)


def _flow_shift(config: Mapping[str, Any]) -> dict[str, Any]:
    """A flow-matching schedule's shift in the multistep solvers' terms (see the module docstring)."""
    if config.get("use_dynamic_shifting"):
        return {"time_shift_type": "exponential"}
    shift = float(config.get("shift", 1.0))
    return {
        "use_dynamic_shifting": True,
        "time_shift_type": "exponential",
        "base_shift": math.log(shift),
        "max_shift": math.log(shift),
        "flow_shift": shift,
    }
