"""Everything about a run, besides the trained weights, that a backup must carry to continue exactly.

The loop's counters (optimizer steps done, current epoch, data batches consumed in it) plus the
state of each stateful helper: optimizer, LR scheduler, grad scaler, EMA, the noise generator, every
global RNG, cadence timers and the smoothed loss. The data loader needs nothing more: its plan is a
pure function of (seed, epoch), so the counters locate the next batch exactly. An emergency backup
passes the RNG snapshot taken when the failed step began.

With several ranks, every rank draws its own noise, so the backup (written by rank 0) holds each
rank's generators, by rank (`ranks_rng`); a sharded run keeps the optimizer's and the moving average's
tensors out of this state (they are in the backup's checkpoint folder, see `trainer.sharding`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from onetrainer.util.seeding import capture_rng_state, capture_torch_rng_state, restore_rng_state

if TYPE_CHECKING:
    import torch

    from onetrainer.trainer.cadence import CadenceClock
    from onetrainer.trainer.ema import ModelEma
    from onetrainer.trainer.metrics import SmoothedValue
    from onetrainer.trainer.precision import MixedPrecision

STATE_FORMAT = 1


@dataclass
class Counters:
    step: int = 0
    """Optimizer steps completed."""
    epoch: int = 0
    """The epoch in progress (0-based)."""
    position: int = 0
    """Data batches of `epoch` already trained on."""


def step_rng_snapshot(generator: torch.Generator) -> dict[str, Any]:
    """The generators a training step draws from (torch's and the noise generator), taken as it begins."""
    return {"torch": capture_torch_rng_state(), "noise": generator.get_state()}


def capture_rng(generator: torch.Generator, step_snapshot: dict[str, Any] | None = None) -> dict[str, Any]:
    """Every generator's state now, or as it was when the step of `step_snapshot` began."""
    global_state = capture_rng_state()
    if step_snapshot is None:
        return {"global": global_state, "noise": generator.get_state()}
    return {"global": {**global_state, **step_snapshot["torch"]}, "noise": step_snapshot["noise"]}


@dataclass
class RunState:
    counters: Counters
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    precision: MixedPrecision
    generator: torch.Generator
    ema: ModelEma | None
    smoothed_loss: SmoothedValue
    clocks: dict[str, CadenceClock]
    noise_reseeded: bool = False
    """Set by `load_state_dict` when the backup's noise stream came from another kind of device (a run moved
    between CPU and GPU), whose generator state this device cannot take: the stream starts anew from the seed
    and step, so the run goes on, no longer as it would have on the old device."""

    def state_dict(
        self,
        step_snapshot: dict[str, Any] | None = None,
        *,
        ranks_rng: list[dict[str, Any]] | None = None,
        sharded: bool = False,
    ) -> dict[str, Any]:
        """The run's state; `ranks_rng`: every rank's `capture_rng` (several ranks), `sharded`: leave out the
        optimizer's and the moving average's tensors."""
        optimizer = self.optimizer.state_dict()
        ema = self.ema.state_dict() if self.ema is not None and not sharded else None
        if sharded:
            optimizer = {"param_groups": optimizer["param_groups"]}
            ema = {"updates": self.ema.updates} if self.ema is not None else None
        state = {
            "format": STATE_FORMAT,
            "counters": asdict(self.counters),
            "optimizer": optimizer,
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.precision.state_dict(),
            "ema": ema,
            "rng": ranks_rng[0] if ranks_rng else capture_rng(self.generator, step_snapshot),
            "smoothed_loss": self.smoothed_loss.state_dict(),
            "clocks": {name: clock.state_dict() for name, clock in self.clocks.items()},
        }
        if ranks_rng is not None and len(ranks_rng) > 1:
            state["ranks_rng"] = ranks_rng
        return state

    def load_state_dict(self, state: dict[str, Any], *, rank: int = 0) -> None:
        if state.get("format") != STATE_FORMAT:
            raise ValueError(f"unknown backup state format {state.get('format')!r}")
        self.counters = Counters(**state["counters"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.precision.load_state_dict(state["scaler"])
        if self.ema is not None and state["ema"] is not None:
            self.ema.load_state_dict(state["ema"])
        self.smoothed_loss.load_state_dict(state["smoothed_loss"])
        for name, clock_state in state["clocks"].items():
            if name in self.clocks:
                self.clocks[name].load_state_dict(clock_state)
        rng = state["ranks_rng"][rank] if "ranks_rng" in state else state["rng"]
        restore_rng_state(rng["global"])
        if rng["noise"].numel() == self.generator.get_state().numel():
            self.generator.set_state(rng["noise"])
        else:  # saved by another kind of device, whose generator state has another form
            self.generator.manual_seed(self.generator.initial_seed() + self.counters.step)
            self.noise_reseeded = True
