"""How one optimizer step turns losses into updated weights: the step strategy the loop calls.

The loop stays the same whatever the strategy: per batch `backward(loss)`, then once per optimizer
step `measure()` (the gradient norm, clipped when `max_grad_norm` is set; the loop stops before the
update if it is not finite) and `apply(skip)` (the optimizer and schedule step). Where the strategy
`skips_on_device`, the finite check need not wait for the host: `skip` is a device flag, set when
the step diverged, by which the optimizer leaves the weights alone (`trainer.readback`). A strategy
owns the parts of that sequence that memory or speed features change:

- `PlainStep` accumulates gradients over the micro-batches, clips them and steps the optimizer once;
  with a `TensorUpdater` (stochastic rounding, optimizer states in CPU memory) the step goes one
  tensor at a time, and so cannot skip on the device.
- `FusedStep` updates each tensor inside `backward`, as soon as its gradient is ready
  (`register_post_accumulate_grad_hook`), and frees that gradient at once, so no full set of
  gradients is ever held. `measure` reports the norm summed up along the way; `apply` only moves the
  schedule. Its limits are checked in the config (`util.config.memory`): no gradient accumulation,
  no clipping by the total norm, no fp16 loss scaling. The update cannot wait for the finite check,
  and no tensor's update waits for the host either (a read per tensor would stall the GPU's queue
  once per tensor, thousands of times a step): a non-finite gradient reaches the weights, the pass's
  norm is non-finite, and the loop stops the run as for any non-finite gradient. Nothing is saved from
  such a step: no backup is written from a diverged step, and an error after the first update of a
  pass writes no emergency backup (`updated_in_backward`), since the weights are then half-changed.
  It cannot run on several ranks: their gradients are averaged once all of them are ready, after
  these hooks would have updated the weights (`check_fused_backward` refuses it before anything loads).

With several ranks the plain strategy averages the gradients over them once per optimizer step, at
the start of `measure` (never on accumulation micro-steps), before unscaling: an fp16 overflow on any
rank then reaches every rank, and all of them skip the step together.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from onetrainer.trainer.updates import TensorUpdater
from onetrainer.util.errors import UserError

if TYPE_CHECKING:
    import torch

    from onetrainer.trainer.precision import MixedPrecision
    from onetrainer.util.config.training import TrainingConfig


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

    @property
    def updated_in_backward(self) -> bool:
        """Whether some weights already hold this step's update before `apply` (a fused backward pass that
        began updating): an error from here on leaves the weights half-changed, so no emergency backup."""
        ...


def clip_gradients(parameters: Sequence[torch.nn.Parameter], max_norm: float | None) -> torch.Tensor:
    """The total gradient norm of `parameters`, clipped to `max_norm` when it is set."""
    import torch

    total = total_norm([param.grad for param in parameters if param.grad is not None])
    if max_norm is not None:
        torch.nn.utils.clip_grads_with_norm_(parameters, max_norm, total)
    return total


def total_norm(grads: Sequence[torch.Tensor]) -> torch.Tensor:
    """The 2-norm of all `grads`, on the accelerator where any of them is there.

    torch's `get_total_norm` moves each tensor's norm to the first tensor's device: with gradients on two
    devices (a full fine-tune's blocks held in CPU memory) that is a copy, and a wait for the GPU, per tensor.
    Here each device's norm is taken where its gradients are, and one value per device is moved.
    """
    import torch

    by_device: dict[torch.device, list[torch.Tensor]] = {}
    for grad in grads:
        by_device.setdefault(grad.device, []).append(grad)
    norms = [torch.nn.utils.get_total_norm(group) for group in by_device.values()]
    if len(norms) <= 1:
        return norms[0] if norms else torch.zeros(())
    return torch.linalg.vector_norm(_on_one_device(norms))


def _on_one_device(values: Sequence[torch.Tensor]) -> torch.Tensor:
    """Scalars from several devices stacked on the accelerator where any of them is (a copy each, queued)."""
    import torch

    main = next((value.device for value in values if value.device.type != "cpu"), values[0].device)
    return torch.stack([value.to(main, non_blocking=True) for value in values])


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
    updater: TensorUpdater | None = None
    """Steps one tensor at a time (stochastic rounding, CPU-held optimizer states); None: `optimizer.step()`."""

    def backward(self, loss: torch.Tensor) -> None:
        self.precision.backward(loss)

    def measure(self) -> torch.Tensor:
        if self.average is not None:
            self.average(self.trained)
        self.precision.unscale(self.optimizer)
        return self.clip(self.trained, self.max_grad_norm)

    @property
    def skips_on_device(self) -> bool:
        return self.updater is None and bool(getattr(self.optimizer, "_step_supports_amp_scaling", False))

    @property
    def updated_in_backward(self) -> bool:
        return False

    def apply(self, skip: torch.Tensor | None = None) -> list[float]:
        if self.updater is not None:
            self.updater.update_all()
        elif skip is None:
            self.precision.step(self.optimizer)
        else:
            self.precision.step_unless(self.optimizer, skip)
        learning_rates = [float(group["lr"]) for group in self.optimizer.param_groups]
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return learning_rates


@dataclass
class FusedStep:
    """Update each tensor as soon as its gradient is ready (see the module docstring)."""

    optimizer: torch.optim.Optimizer
    scheduler: Any
    precision: MixedPrecision
    trained: list[torch.nn.Parameter]
    updater: TensorUpdater
    _squares: dict[torch.device, torch.Tensor] = field(default_factory=dict, init=False)
    """The squared gradient norm so far, per device: summed where the gradients are (CPU-held masters' on the
    CPU), so no gradient waits for a copy of its square to another device; `measure` adds them up once."""
    _updated: bool = field(default=False, init=False)
    _one_at_a_time: threading.Lock = field(default_factory=threading.Lock, init=False)
    """The hooks of CPU-held weights (offloaded blocks' masters) run on the thread that called `backward`,
    those of GPU weights on autograd's CUDA thread: two updates could otherwise interleave in the one
    optimizer (`TensorUpdater` narrows its groups to one tensor per step)."""

    def __post_init__(self) -> None:
        for param in self.trained:
            param.register_post_accumulate_grad_hook(self._ready)

    def _ready(self, param: torch.nn.Parameter) -> None:
        with self._one_at_a_time:
            self._update(param)

    def _update(self, param: torch.nn.Parameter) -> None:
        grad = param.grad
        if grad is None:
            return
        square = grad.detach().float().pow(2).sum()
        so_far = self._squares.get(square.device)
        self._squares[square.device] = square if so_far is None else so_far + square
        self._updated = True
        self.updater.update(param)

    def backward(self, loss: torch.Tensor) -> None:
        self.precision.backward(loss)

    def measure(self) -> torch.Tensor:
        import torch

        if not self._squares:
            return torch.zeros(())
        return _on_one_device(list(self._squares.values())).sum().sqrt()

    @property
    def skips_on_device(self) -> bool:
        return False

    @property
    def updated_in_backward(self) -> bool:
        return self._updated

    def apply(self, skip: torch.Tensor | None = None) -> list[float]:
        learning_rates = [float(group["lr"]) for group in self.optimizer.param_groups]
        self.scheduler.step()
        self._squares, self._updated = {}, False
        return learning_rates


def check_fused_backward(training: TrainingConfig, *, distributed: bool) -> None:
    """Refuse a fused backward pass on several ranks, before anything loads (see the module docstring)."""
    if training.fused_backward and distributed:
        raise UserError(
            "training.fused_backward does not work with several GPUs: each weight would be updated by its own "
            "rank's gradient as soon as it is ready, before the ranks' gradients are averaged",
            where="training.fused_backward",
            hint="Turn it off for multi-GPU runs (the other memory settings work there).",
        )


def build_step(
    training: TrainingConfig,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    precision: MixedPrecision,
    trained: list[torch.nn.Parameter],
    *,
    masters: dict[torch.nn.Parameter, torch.nn.Parameter] | None = None,
    average: Callable[[list[torch.nn.Parameter]], None] | None = None,
    clip: Callable[[Sequence[torch.nn.Parameter], float | None], torch.Tensor] = clip_gradients,
) -> StepStrategy:
    """The strategy the `training` section asks for.

    `masters` are the CPU masters of `updates.offload_to_cpu`; `average` and `clip` those of a run on
    several ranks (see `PlainStep`).
    """
    updater = TensorUpdater(
        optimizer,
        trained,
        stochastic_rounding=training.stochastic_rounding,
        seed=training.seed,
        masters=masters or {},
        step_index=lambda: int(getattr(scheduler, "last_epoch", 0)),
    )
    if not training.fused_backward:
        per_tensor = training.stochastic_rounding or bool(masters)
        return PlainStep(
            optimizer,
            scheduler,
            precision,
            trained,
            training.max_grad_norm,
            average=average,
            clip=clip,
            updater=updater if per_tensor else None,
        )
    check_fused_backward(training, distributed=average is not None)
    return FusedStep(optimizer, scheduler, precision, trained, updater)
