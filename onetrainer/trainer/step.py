"""How one optimizer step turns losses into updated weights: the step strategy the loop calls.

The loop stays the same whatever the strategy: per batch `backward(loss)`, then once per optimizer
step `measure()` (the gradient norm, clipped when `max_grad_norm` is set; the loop stops before the
update if it is not finite) and `apply(skip)` (the optimizer and schedule step). Where the strategy
`skips_on_device`, the finite check need not wait for the host: `skip` is a device flag, set when
the step diverged, by which the optimizer leaves the weights alone (`trainer.readback`). A strategy owns the
parts of that sequence that memory or speed features change: a fused backward pass steps each
parameter as its gradient is ready and keeps no full set of gradients, so it would measure and apply
inside `backward` instead.

With several ranks the plain strategy averages the gradients over them once per optimizer step, at
the start of `measure` (never on accumulation micro-steps), before unscaling: an fp16 overflow on any
rank then reaches every rank, and all of them skip the step together.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import torch

    from onetrainer.trainer.precision import MixedPrecision


class StepStrategy(Protocol):
    def backward(self, loss: torch.Tensor) -> None:
        """Backpropagate one micro-batch's loss (already divided by the accumulation count)."""
        ...

    def measure(self) -> torch.Tensor:
        """The step's total gradient norm (a 0-dim tensor on the device), after unscaling and clipping."""
        ...

    def apply(self, skip: torch.Tensor | None = None) -> list[float]:
        """Update the weights (unless the device flag `skip` is set) and the schedule, clear the gradients;
        returns the learning rates used."""
        ...

    @property
    def skips_on_device(self) -> bool:
        """Whether `apply` honours a device `skip` flag (else the loop reads the check before `apply`)."""
        ...


def clip_gradients(parameters: Sequence[torch.nn.Parameter], max_norm: float | None) -> torch.Tensor:
    """The total gradient norm of `parameters`, clipped to `max_norm` when it is set."""
    import torch

    if max_norm is not None:
        return torch.nn.utils.clip_grad_norm_(parameters, max_norm)
    grads = [param.grad for param in parameters if param.grad is not None]
    return torch.nn.utils.get_total_norm(grads)


@dataclass
class PlainStep:
    """Accumulate gradients over the micro-batches, clip them, then step the optimizer once."""

    optimizer: torch.optim.Optimizer
    scheduler: Any
    precision: MixedPrecision
    trained: list[torch.nn.Parameter]
    max_grad_norm: float | None
    average: Callable[[list[torch.nn.Parameter]], None] | None = None
    """Averages the gradients over the ranks (data parallel); None in a single process."""
    clip: Callable[[Sequence[torch.nn.Parameter], float | None], torch.Tensor] = clip_gradients
    """Measures (and clips) the gradient norm; a sharded run sums it over the ranks' shards."""

    def backward(self, loss: torch.Tensor) -> None:
        self.precision.backward(loss)

    def measure(self) -> torch.Tensor:
        if self.average is not None:
            self.average(self.trained)
        self.precision.unscale(self.optimizer)
        return self.clip(self.trained, self.max_grad_norm)

    @property
    def skips_on_device(self) -> bool:
        return bool(getattr(self.optimizer, "_step_supports_amp_scaling", False))

    def apply(self, skip: torch.Tensor | None = None) -> list[float]:
        if skip is None:
            self.precision.step(self.optimizer)
        else:
            self.precision.step_unless(self.optimizer, skip)
        learning_rates = [float(group["lr"]) for group in self.optimizer.param_groups]
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return learning_rates
