"""Preview images during training: one PNG per prompt in `samples/`, and into TensorBoard.

Files are named by step and prompt index (`step-00000100-0.png`), so the previews of one prompt sort
in training order. The sampler draws with each prompt's own seed, so previews are comparable across
the run; the caller keeps the training RNG streams untouched around this.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from onetrainer.trainer.tensorboard import TensorBoardLog
from onetrainer.util.atomic import atomic_write_bytes
from onetrainer.util.config.output import SamplingConfig


def default_size(resolution: int | list[int]) -> int:
    return resolution[0] if isinstance(resolution, list) else resolution


def draw_previews(
    sampler: Any,
    sampling: SamplingConfig,
    *,
    step: int,
    resolution: int | list[int],
    directory: Path,
    tensorboard: TensorBoardLog,
) -> list[Path]:
    """Sample every prompt in `sampling.prompts`; returns the written files."""
    written = []
    size = default_size(resolution)
    for index, prompt in enumerate(sampling.prompts):
        images = sampler.sample(
            prompt.prompt,
            prompt.negative_prompt,
            steps=prompt.steps,
            cfg=prompt.cfg,
            seed=prompt.seed,
            width=prompt.width or size,
            height=prompt.height or size,
            scheduler=prompt.scheduler,
        )
        for number, image in enumerate(images):
            suffix = f"-{number}" if len(images) > 1 else ""
            path = directory / f"step-{step:08d}-{index}{suffix}.png"
            buffer = io.BytesIO()
            image.save(buffer, format="PNG")
            atomic_write_bytes(path, buffer.getvalue())
            written.append(path)
            if sampling.to_tensorboard:
                tensorboard.image(f"samples/{index}{suffix}", image, step)
    return written
