"""Checks that span sections of a validated config, reported like field errors (with key paths).

A field validator sees one section; these need two, such as a preview prompt's size, which falls back
to the training resolution when it is not set.
"""

from __future__ import annotations

from onetrainer.util.config.output import SIZE_STEP
from onetrainer.util.config.schema import TrainConfig
from onetrainer.util.errors import ConfigProblem


def cross_section_problems(config: TrainConfig) -> list[ConfigProblem]:
    """Every problem that only shows when sections are read together; empty when there is none."""
    return _preview_size_problems(config)


def _preview_size_problems(config: TrainConfig) -> list[ConfigProblem]:
    resolution = config.data.resolution
    default = resolution[0] if isinstance(resolution, list) else resolution
    if default % SIZE_STEP == 0:
        return []
    return [
        ConfigProblem(
            f"sampling.prompts.{index}.{side}",
            f"not set, so the preview takes data.resolution ({default}), which is not a multiple of {SIZE_STEP}; "
            f"set {side} (e.g. {default // SIZE_STEP * SIZE_STEP})",
        )
        for index, prompt in enumerate(config.sampling.prompts)
        for side in ("width", "height")
        if getattr(prompt, side) is None
    ]
