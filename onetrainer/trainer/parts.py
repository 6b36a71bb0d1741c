"""What the loop trains with: the model, its setup, the data, and how previews and outputs are made.

The loop sees a family only through these parts, so it stays the same for every family and method;
`components.build_parts` assembles them from the registry (a family's `TrainingSetup` and `Sampler`,
`model.contracts`), and tests may assemble them by hand from anything with these methods.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    import torch

    from onetrainer.model.contracts import Sampler

Batch = dict[str, Any]


class LoopSetup(Protocol):
    """What the loop, backups and validation ask of a setup: the part of `TrainingSetup` used after start-up."""

    def parameter_groups(self) -> list[dict[str, Any]]: ...

    def trainable_state_dict(self) -> dict[str, torch.Tensor]: ...

    def load_trainable_state_dict(self, weights: dict[str, torch.Tensor]) -> None: ...

    def predict(self, batch: Batch, generator: torch.Generator) -> dict[str, torch.Tensor]: ...

    def loss(self, prediction: dict[str, torch.Tensor], batch: Batch) -> torch.Tensor: ...

    def on_step(self, step: int, epoch: int) -> None: ...

    def train(self) -> None: ...

    def eval(self) -> None: ...


@runtime_checkable
class ShardableSetup(Protocol):
    """A setup whose fully trained components can be sharded across ranks (`training.distributed: fsdp`)."""

    def shard(self, shard_module: Callable[[torch.nn.Module], None]) -> list[torch.nn.Module]:
        """Apply `shard_module` to each fully trained component, then train the sharded parameters it
        leaves there; returns those components."""
        ...


class LoopData(Protocol):
    """What the loop asks of the data loader."""

    def fill_cache(self) -> Any:
        """Encode whatever the cache lacks; returns the loader's statistics."""
        ...

    def batches(self, epoch: int, start: int = 0) -> Iterator[Batch]:
        """The batches of `epoch` this rank trains on, skipping the first `start`."""
        ...

    def fingerprint(self) -> str:
        """Names the data plan: the same fingerprint and seed give the same batches (backups record it)."""
        ...


@dataclass
class TrainingParts:
    model: Any
    setup: LoopSetup
    data: LoopData
    batches_in_epoch: Callable[[int], int]
    """Data batches this rank trains on in an epoch (the plan knows this before any image loads)."""
    save_model: Callable[[Path], Path]
    """Write the trained result to a path in the configured format; returns what was written."""
    sampler: Sampler | None = None
    """Draws the previews."""
    validation_batches: Callable[[], Iterable[tuple[int, Batch]]] | None = None
    """The validation concepts' batches, each with its number among all ranks' (it seeds the batch's noise),
    or None when the run has none."""
    close: Callable[[], None] | None = None
    """Release workers and encoders at the end of the run, however it ends."""
