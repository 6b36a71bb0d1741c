"""Preview images during training: one PNG per prompt in `samples/`, and into TensorBoard.

Files are named by step and prompt index (`step-00000100-0.png`), so the previews of one prompt sort
in training order. Each carries its generation settings (prompt, seed, steps, ..., and the training
step) in the same PNG text chunks as `onetrainer sample`'s images, so a good preview can be
reproduced. The sampler draws with each prompt's own seed, so previews are comparable across the
run; the caller keeps the training RNG streams untouched around this.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from onetrainer.model_sampler.png import GenerationInfo, save_png
from onetrainer.model_sampler.schedulers import check_scheduler
from onetrainer.trainer.tensorboard import TensorBoardLog
from onetrainer.util.config.output import SamplingConfig

if TYPE_CHECKING:
    from onetrainer.model.contracts import Sampler


def default_size(resolution: int | list[int]) -> int:
    return resolution[0] if isinstance(resolution, list) else resolution


def draw_previews(
    sampler: Sampler,
    sampling: SamplingConfig,
    *,
    step: int,
    resolution: int | list[int],
    directory: Path,
    tensorboard: TensorBoardLog,
    model: str,
    write: bool = True,
) -> list[Path]:
    """Sample every prompt in `sampling.prompts`; returns the written files. `model` names the base model.

    Without `write`, the images are drawn and dropped: a rank of a sharded model takes part in every
    forward pass of the previews that rank 0 writes.
    """
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
        if not write:
            continue
        for number, image in enumerate(images):
            suffix = f"-{number}" if len(images) > 1 else ""
            path = directory / f"step-{step:08d}-{index}{suffix}.png"
            info = GenerationInfo(
                prompt=prompt.prompt,
                negative_prompt=prompt.negative_prompt,
                steps=prompt.steps,
                cfg=prompt.cfg,
                seed=prompt.seed + number,
                width=image.width,
                height=image.height,
                scheduler=check_scheduler(prompt.scheduler),
                model=model,
                training_step=step,
            )
            save_png(image, path, info)
            written.append(path)
            if sampling.to_tensorboard:
                tensorboard.image(f"samples/{index}{suffix}", image, step)
    return written
