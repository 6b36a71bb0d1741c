"""How one optimizer step turns losses into updated weights: the step strategy the loop calls.

The loop stays the same whatever the strategy: per batch `backward(loss)`, then once per optimizer
step `measure()` (the gradient norm, clipped when `max_grad_norm` is set; the loop stops before the
update if it is not finite) and `apply(skip)` (the optimizer and schedule step). Where the strategy
`skips_on_device`, the finite check need not wait for the host: `skip` is a device flag, set when
the step diverged, by which the optimizer leaves the weights alone (`trainer.readback`). A strategy owns the
parts of that sequence that memory or speed features change: a fused backward pass steps each
parameter as its gradient is ready and keeps no full set of gradients, so it would measure and apply
inside `backward` instead.
"""

from __future__ import annotations

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


@dataclass
class PlainStep:
    """Accumulate gradients over the micro-batches, clip them, then step the optimizer once."""

    optimizer: torch.optim.Optimizer
    scheduler: Any
    precision: MixedPrecision
    trained: list[torch.nn.Parameter]
    max_grad_norm: float | None

    def backward(self, loss: torch.Tensor) -> None:
        self.precision.backward(loss)

    def measure(self) -> torch.Tensor:
        import torch

        self.precision.unscale(self.optimizer)
        if self.max_grad_norm is not None:
            return torch.nn.utils.clip_grad_norm_(self.trained, self.max_grad_norm)
        grads = [param.grad for param in self.trained if param.grad is not None]
        return torch.nn.utils.get_total_norm(grads)

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
