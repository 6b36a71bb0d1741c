"""Validation loss: the mean loss over the validation concepts, with the same noise every time.

Each validation pass seeds its own noise generator from the run seed, so two passes differ only
because the weights changed, and the curve in TensorBoard is comparable from point to point. With
several ranks each measures its share of the batches and the session adds up the sums of all ranks.
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
    batches: Iterable[dict[str, Any]],
    precision: MixedPrecision,
    *,
    seed: int,
    device: torch.device,
) -> tuple[float, int]:
    """(sum of the batches' losses, number of batches): each rank's share, which the ranks then add up."""
    import torch

    generator = torch.Generator(device=device)
    generator.manual_seed(seed + VALIDATION_SEED_OFFSET)
    total = 0.0
    count = 0
    with torch.no_grad():
        for batch in batches:
            with precision.autocast():
                output = setup.predict(batch, generator)
                loss = setup.loss(output, batch)
            total += float(loss)
            count += 1
    return total, count
