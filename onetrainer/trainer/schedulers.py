"""Learning-rate schedules with warm-up, as one pure factor function wrapped in torch's `LambdaLR`.

The factor is a plain closure, not an object: `LambdaLR.state_dict()` then stores only the step
counter, so a run resumed with more epochs follows the schedule for its new length instead of
reloading the old one.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from onetrainer.util.config.training import LrScheduler, Optimizer, TrainingConfig
from onetrainer.util.errors import UserError

if TYPE_CHECKING:
    import torch


def resolve_warmup_steps(warmup: float, total_steps: int) -> int:
    """`warmup` >= 1 counts steps; below 1 it is a fraction of the run."""
    steps = int(warmup) if warmup >= 1 else round(warmup * total_steps)
    return max(0, min(steps, total_steps))


def lr_factor(
    kind: LrScheduler,
    step: int,
    total_steps: int,
    warmup_steps: int = 0,
    *,
    cycles: int = 1,
    power: float = 1.0,
    min_factor: float = 0.0,
) -> float:
    """Multiplier of the base learning rate for the optimizer step with 0-based index `step`.

    Warm-up rises linearly to 1 over `warmup_steps` (the first step already gets 1/warmup, so no
    step is wasted at zero); the decaying schedules then fall from 1 to `min_factor` over the rest.
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if kind is LrScheduler.CONSTANT:
        return 1.0
    progress = min(1.0, max(0.0, (step - warmup_steps) / max(1, total_steps - warmup_steps)))
    if kind is LrScheduler.LINEAR:
        shape = 1.0 - progress
    elif kind is LrScheduler.COSINE:
        shape = 0.5 * (1.0 + math.cos(math.pi * progress))
    elif kind is LrScheduler.COSINE_WITH_RESTARTS:
        cycle_progress = (progress * cycles) % 1.0 if progress < 1.0 else 1.0
        shape = 0.5 * (1.0 + math.cos(math.pi * cycle_progress))
    elif kind is LrScheduler.POLYNOMIAL:
        shape = (1.0 - progress) ** power
    else:
        raise ValueError(f"unknown scheduler {kind}")
    return min_factor + (1.0 - min_factor) * shape


def build_lr_scheduler(
    optimizer: torch.optim.Optimizer, config: TrainingConfig, total_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """The scheduler for `optimizer`, stepped once per optimizer step.

    Schedule-free AdamW replaces the schedule (it warms up internally), so it accepts only
    `constant`; its warm-up is handed to the optimizer by the caller.
    """
    import torch

    kind = config.lr_scheduler
    warmup_steps = resolve_warmup_steps(config.warmup, total_steps)
    if config.optimizer is Optimizer.SCHEDULE_FREE_ADAMW:
        if kind is not LrScheduler.CONSTANT:
            raise UserError(
                "schedule-free AdamW needs no learning-rate schedule",
                where="training.lr_scheduler",
                hint="Set `training.lr_scheduler=constant`; `training.warmup` still applies.",
            )
        warmup_steps = 0

    def factor(step: int) -> float:
        return lr_factor(
            kind,
            step,
            total_steps,
            warmup_steps,
            cycles=config.lr_cycles,
            power=config.lr_power,
            min_factor=config.lr_min_factor,
        )

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
