"""Each step's loss and gradient norm on the host without stalling the device; the NaN guard on the device.

Reading a device value on the host waits for all the work queued before it. Read every step, before
the update, the GPU idles while the host prepares the next step, and a host-bound step (issue 17)
gets slower still. So with `training.read_back_lag` N > 0:
- the finite check is made on the device: `measure` turns (loss, gradient norm) into a flag that is
  set when this step or any earlier one diverged (it stays set) and, under fp16's loss scaling, when
  this step's gradients overflowed (routine there: that step alone is skipped). An optimizer that
  takes torch's `found_inf` (fused AdamW, Adam, SGD: the protocol of torch's GradScaler) skips its
  update by that flag on the device, so neither a diverged step's update nor any later one happens;
- the values are copied into pinned host memory without blocking and read N steps later, when the
  copy has long completed; the run then stops at the diverged step with the message and the backups
  a read before its update would have given, since the weights are still those before it;
- every pending step is read before anything is written or shown that depends on it (backups, saves,
  previews, validation, a stop), and at the end of the run: a backup is always of checked steps.
A step's record (metrics, progress) is therefore written N steps late; the state a backup holds is not.

With several ranks (`distributed`) every rank must take the same decisions at the same step, or one
waits forever for the others in a collective call. So `measure` also sums, on the device and in the
same small all-reduce, every rank's loss, stop request and failure flag (a rank whose forward or
backward pass failed): the values each rank reads, at whatever lag, are the same on every rank, and
the loop stops, fails or diverges on all of them after the same step. A failed rank's flag also sets
the skip flag, so no update uses its gradients. (The gradient norm needs no sum: it is measured on
gradients already averaged over the ranks.)

With N = 0 the values are read each step before its update (one device sync per step), which is what
optimizers without `found_inf` need, and costs nothing where the device is the host (CPU). `auto`
chooses 1 on CUDA when the step can skip on the device, else 0.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from onetrainer.trainer.distributed import World, all_reduce_sum
from onetrainer.util.errors import UserError

if TYPE_CHECKING:
    import torch


@dataclass
class StepRecord:
    """One optimizer step's results: on the device until read, then on the host."""

    step: int
    values: Any
    """[loss, gradient norm, ranks asked to stop, ranks that failed] on the device (None once read)."""
    host: Any = None
    """The pinned host row the values are copied into (CUDA, lag > 0)."""
    event: Any = None
    """Recorded after that copy: waiting on it waits for this step's values only."""
    loss: float = math.nan
    grad_norm: float = math.nan
    stop: bool = False
    """Whether a rank was asked to stop in this step (several ranks: all of them stop once it is read)."""
    failed: bool = False
    """Whether a rank's forward or backward pass of this step failed (several ranks)."""
    epoch: int = 0
    learning_rates: list[float] | None = None
    """The rates the update used, per group; None until the step's update was made."""
    flops: float | None = None
    """FLOPs of the step's forward and backward passes (see `flops`), None where not counted."""
    seconds: float = math.nan
    """Host time from the previous step's end (or the start of training) to this step's end."""


class RankFailed(Exception):
    """A rank's forward or backward pass of `step` failed: every rank learns it with that step's values.

    `before_update`: read before the step's update (lag 0), so the state before the step is intact and an
    exact emergency backup can still be written; read later, the run went on (without updates) since.
    """

    def __init__(self, step: int, *, before_update: bool) -> None:
        super().__init__(f"a rank failed in step {step}")
        self.step = step
        self.before_update = before_update


def resolve_lag(setting: int | str, device: torch.device, *, skips_on_device: bool) -> int:
    """The lag `training.read_back_lag` asks for, checked against what the step can do."""
    if setting == "auto":
        return 1 if device.type == "cuda" and skips_on_device else 0
    lag = int(setting)
    if lag > 0 and not skips_on_device:
        raise UserError(
            f"training.read_back_lag={lag} needs an optimizer that can skip a diverged step on the device "
            "(adamw or sgd with fused kernels, as on CUDA by default)",
            where="training.read_back_lag",
            hint="Set training.read_back_lag=auto (or 0) for this optimizer.",
        )
    return lag


@dataclass
class StepResults:
    """The steps whose values are on their way to the host, in order; see the module docstring."""

    device: torch.device
    lag: int
    tolerates_overflow: bool
    """fp16's scaler: non-finite gradients skip that step's update and do not stop the run."""
    check: Callable[[StepRecord], None]
    """Called with each record as it is read; raises to stop the run (the NaN guard)."""
    world: World = field(default_factory=World)
    """The ranks whose loss, stop requests and failures each step sums (see the module docstring)."""
    clock: Callable[[], float] = time.perf_counter
    _pending: deque[StepRecord] = field(default_factory=deque)
    _diverged: Any = None
    _ring: Any = None
    _last_end: float | None = None
    _stop_read: bool = False

    def restart_clock(self) -> None:
        """Training (re)starts now: the next step's `seconds` count from here."""
        self._last_end = self.clock()

    def measure(
        self, step: int, loss: torch.Tensor, grad_norm: torch.Tensor, *, stop: bool = False, failed: bool = False
    ) -> torch.Tensor | None:
        """Start the read of step `step`'s values; returns the device flag its update must skip by.

        `stop`: this rank was asked to stop; `failed`: its forward or backward pass failed (both only
        matter with several ranks). With lag 0 the values are read (and checked) here, before the
        update, and there is no flag.
        """
        import torch

        loss = loss.detach().float()
        # Filled on the device: a tensor made from host values would be a blocking copy.
        shared = torch.stack([loss, loss.new_full((), float(stop)), loss.new_full((), float(failed))])
        if self.world.distributed:
            all_reduce_sum(self.world, shared)
            shared[0] /= self.world.size
        values = torch.cat([shared[:1], grad_norm.detach().float().to(loss.device).reshape(1), shared[1:]])
        record = StepRecord(step, values)
        self._pending.append(record)
        if self.lag == 0:
            self._read(record)
            self._check(record)
            return None
        skip = self._skip_flag(values)
        if self.device.type == "cuda":
            if self._ring is None:
                self._ring = torch.empty((self.lag + 2, len(values)), dtype=torch.float32, pin_memory=True)
            record.host = self._ring[step % len(self._ring)]
            record.host.copy_(values, non_blocking=True)
            record.event = torch.cuda.Event()
            record.event.record(torch.cuda.current_stream(self.device))
        return skip

    def _skip_flag(self, values: torch.Tensor) -> torch.Tensor:
        import torch

        finite = torch.isfinite(values[:2])
        diverged = ~finite[0] if self.tolerates_overflow else ~finite.all()
        diverged = diverged | (values[3] > 0)  # a rank failed: its gradients are not to be used
        self._diverged = diverged if self._diverged is None else self._diverged | diverged
        return (self._diverged | ~finite[1]).float()

    def finish(self, epoch: int, learning_rates: list[float], flops: float | None = None) -> None:
        """The newest measured step made its update (or skipped it on the device)."""
        record = self._pending[-1]
        record.epoch, record.learning_rates, record.flops = epoch, learning_rates, flops
        now = self.clock()
        record.seconds = now - self._last_end if self._last_end is not None else math.nan
        self._last_end = now

    def ready(self, *, everything: bool = False) -> list[StepRecord]:
        """The finished steps due to be read (every one with `everything`), read and checked, oldest first."""
        due: list[StepRecord] = []
        newest = self._pending[-1].step if self._pending else 0
        while self._pending and self._pending[0].learning_rates is not None:
            if not everything and self._pending[0].step > newest - self.lag:
                break
            record = self._pending.popleft()
            if record.values is not None:
                self._read(record)
                self._check(record)
            due.append(record)
        return due

    @property
    def pending(self) -> int:
        return len(self._pending)

    @property
    def stop_read(self) -> bool:
        """Whether a step read so far carried a stop request of any rank (the same on every rank)."""
        return self._stop_read

    def _check(self, record: StepRecord) -> None:
        """A failure on any rank first (its loss is meaningless), then the NaN guard."""
        if record.failed:
            raise RankFailed(record.step, before_update=self.lag == 0)
        self.check(record)

    def _read(self, record: StepRecord) -> None:
        if record.event is not None:
            record.event.synchronize()
            loss, grad_norm, stops, failures = record.host.tolist()
        else:
            loss, grad_norm, stops, failures = record.values.tolist()
        record.loss, record.grad_norm, record.stop, record.failed = loss, grad_norm, stops > 0, failures > 0
        self._stop_read = self._stop_read or record.stop
        record.values = record.host = record.event = None
