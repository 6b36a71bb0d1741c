"""Validation loss: the mean loss over the validation concepts, with the same noise every time.

Each validation batch seeds the noise generator from the run seed and the batch's number, so two passes
differ only because the weights changed, and the curve in TensorBoard is comparable from point to point.
With several ranks each measures its share of the batches and the session adds up the sums of all ranks:
the same loss as one process measures. The loss is the mean over samples: a bucket's last, short batch
weighs by its size.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from onetrainer.trainer.parts import LoopSetup
    from onetrainer.trainer.precision import MixedPrecision

VALIDATION_SEED_OFFSET = 7919
"""Keeps the validation noise stream apart from the training one, which starts at the run seed."""


def validation_sums(
    setup: LoopSetup,
    batches: Iterable[tuple[int, dict[str, Any]]],
    precision: MixedPrecision,
    *,
    seed: int,
    device: torch.device,
) -> tuple[float, int]:
    """(sum of the samples' losses, number of samples): each rank's share, which the ranks then add up.
    `batches` pairs each batch with its number among all ranks' batches."""
    import torch

    generator = torch.Generator(device=device)
    total = 0.0
    count = 0
    with torch.no_grad():
        for number, batch in batches:
            generator.manual_seed(seed + VALIDATION_SEED_OFFSET + number)
            with precision.autocast():
                output = setup.predict(batch, generator)
                loss = setup.loss(output, batch)
            samples = _samples(batch)
            total += float(loss) * samples  # the setup's loss is the batch's mean over its samples
            count += samples
    return total, count


def _samples(batch: dict[str, Any]) -> int:
    """The batch's size: the leading dimension of its tensors."""
    return next(len(value) for value in batch.values() if getattr(value, "ndim", 0) > 0)
