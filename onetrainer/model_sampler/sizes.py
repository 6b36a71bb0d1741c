"""Image sizes a sampler can draw: a multiple of the family's step, and not absurdly large.

Checked before any model loads, so `sample --height 100000` fails at once instead of denoising for
minutes (or running out of memory); the sampler checks again for callers that skip the command.
"""

from __future__ import annotations

from onetrainer.util.errors import UserError

MAX_SIDE = 4096
"""Largest side in pixels: 8x SD 1.x's training size. Beyond it the attention layers' memory and time
grow past what any machine here has, and these models draw repeated, broken compositions anyway."""


def check_side(label: str, value: int, step: int, *, where: str | None = None, model_limit: int | None = None) -> int:
    """`value` if it is a drawable side for a model whose sizes are multiples of `step` (and at most
    `model_limit`, the model's `largest_side`); else a user error."""
    if model_limit is not None and value > model_limit:
        raise UserError(
            f"{label} {value} is larger than the {model_limit} px this model's positional embedding covers",
            where=where,
            hint=f"Draw at most {model_limit} px per side with this model.",
        )
    if value > MAX_SIDE:
        raise UserError(
            f"{label} {value} is larger than the {MAX_SIDE} px this tool draws",
            where=where,
            hint=f"Draw at most {MAX_SIDE} px per side (these models are trained at 512-1024 px) and upscale "
            "the image afterwards.",
        )
    if value < step or value % step:
        lower, upper = max(step, value // step * step), max(step, -(-value // step) * step)
        nearest = f"{lower}" if lower == upper else f"{lower} or {upper}"
        raise UserError(
            f"{label} {value} is not a positive multiple of {step}",
            where=where,
            hint=f"Sides are multiples of {step} px for this model: use {nearest}.",
        )
    return value
