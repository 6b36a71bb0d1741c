"""What the loop trains with: the model, its setup, the data, and how previews and outputs are made.

The loop sees a family only through these parts, so it stays the same for every family and method;
`components.build_parts` assembles them from the registry, and tests may assemble them by hand.

The `data` object provides `fill_cache()` and `batches(epoch, start) -> Iterator[batch]` (the
batches of `epoch`, skipping the first `start`); `setup` provides `parameter_groups()`,
`trainable_state_dict()`, `load_trainable_state_dict(weights)`, `predict(batch, generator)`,
`loss(prediction, batch)`, `on_step(step, epoch)`, `train()` and `eval()`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

Batch = dict[str, Any]


@dataclass
class TrainingParts:
    model: Any
    setup: Any
    data: Any
    batches_in_epoch: Callable[[int], int]
    """Data batches this rank trains on in an epoch (the plan knows this before any image loads)."""
    save_model: Callable[[Path], Path]
    """Write the trained result to a path in the configured format; returns what was written."""
    sampler: Any | None = None
    """Draws previews (`sample(prompt, negative_prompt, steps=, cfg=, seed=, width=, height=)`)."""
    validation_batches: Callable[[], Iterable[Batch]] | None = None
    """The validation concepts' batches, or None when the run has none."""
    close: Callable[[], None] | None = None
    """Release workers and encoders at the end of the run, however it ends."""
