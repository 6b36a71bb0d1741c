"""A running training session: the objects the loop works on, and its side work between steps.

The loop in `loop.py` decides *when* (cadences, signals, the end of the run); this module does the
*what*: writing a backup, drawing previews, saving, measuring validation loss and logging a step.
Only rank 0 writes files; previews, saves and validation run with the training RNG streams
preserved, in eval mode, and with the EMA weights where configured. Backups and saves check first
that the weights they would write are finite (on every rank, so that all of them stop together).
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from onetrainer.model_setup.compile import eager
from onetrainer.trainer.backup import prune_backups, resume_command, write_backup
from onetrainer.trainer.device import memory_use
from onetrainer.trainer.divergence import all_finite, diverged
from onetrainer.trainer.flops import StepFlops
from onetrainer.trainer.metrics import MetricsLog, Throughput
from onetrainer.trainer.optimizers import set_optimizer_mode
from onetrainer.trainer.parts import TrainingParts
from onetrainer.trainer.previews import draw_previews
from onetrainer.trainer.readback import StepRecord, StepResults
from onetrainer.trainer.state import RunState
from onetrainer.trainer.step import StepStrategy
from onetrainer.trainer.tensorboard import TensorBoardLog
from onetrainer.trainer.validation import validation_loss
from onetrainer.trainer.workspace import Workspace
from onetrainer.util.config.schema import TrainConfig
from onetrainer.util.seeding import preserved_rng

if TYPE_CHECKING:
    import torch

ProgressCallback = Callable[[dict[str, Any]], None]


@dataclass
class Session:
    config: TrainConfig
    config_yaml: str
    parts: TrainingParts
    run: RunState
    workspace: Workspace
    device: torch.device
    total_steps: int
    epochs: int
    is_main: bool
    world_size: int
    tensorboard: TensorBoardLog
    metrics: MetricsLog
    progress: ProgressCallback
    trained: list[Any]
    """The trained parameters, in the optimizer's order (clipping, finite checks)."""
    step: StepStrategy
    """How losses become updated weights (backward, gradient norm and clipping, optimizer step)."""
    command: str
    """The command line that started this run, without `--resume`, for messages that say how to continue."""
    results: StepResults
    """The steps' losses and gradient norms on their way to the host, and the NaN guard (`readback`)."""
    flops: StepFlops
    """Each step's FLOPs, counted once per batch shape, and the device's peak (`flops`)."""
    throughput: Throughput = field(default_factory=Throughput)
    compile_seconds: float | None = None
    """How long the first step took with `training.compile` (compilation, or loading it from the cache)."""
    last_backup_step: int | None = None
    last_backup_path: Path | None = None
    """The newest backup of this run: restored from, or written (always with finite weights)."""
    last_preview_step: int | None = None

    @property
    def images_per_step(self) -> int:
        training = self.config.training
        return training.batch_size * training.gradient_accumulation_steps * self.world_size

    @contextlib.contextmanager
    def inference(self, *, use_ema: bool) -> Iterator[None]:
        """Eval mode, untouched RNG streams, compiled blocks run uncompiled (`model_setup.compile.eager`), and the
        averaged weights if asked, for the block."""
        setup = self.parts.setup
        ema = self.run.ema if use_ema else None
        set_optimizer_mode(self.run.optimizer, train=False)
        setup.eval()
        try:
            with preserved_rng(), eager(), ema.applied() if ema is not None else contextlib.nullcontext():
                yield
        finally:
            setup.train()
            set_optimizer_mode(self.run.optimizer, train=True)
            self.throughput.restart()

    def resume_command(self, backup: Path | None = None) -> str:
        """The command that continues this run from its newest backup, or from `backup`."""
        return resume_command(self.command, backup)

    def backup(self, *, step_snapshot: dict[str, Any] | None = None) -> Path | None:
        step = self.run.counters.step
        if not all_finite(self.trained):
            raise diverged(self, f"the weights became non-finite in the update of step {step}, so it was not backed up")
        if not self.is_main:
            return None
        path = write_backup(
            self.workspace.backups,
            step=step,
            epoch=self.run.counters.epoch,
            weights=self.parts.setup.trainable_state_dict(),
            state=self.run.state_dict(step_snapshot),
            config_yaml=self.config_yaml,
        )
        prune_backups(self.workspace.backups, self.config.saving.backup_keep_last)
        self.last_backup_step = step
        self.last_backup_path = path
        self.progress({"event": "backup", "step": step, "path": str(path), "message": f"backup written: {path}"})
        return path

    def previews(self) -> list[Path]:
        step = self.run.counters.step
        self.last_preview_step = step
        if not self.is_main or self.parts.sampler is None or not self.config.sampling.prompts:
            return []
        with self.inference(use_ema=self.config.training.ema.for_samples):
            paths = draw_previews(
                self.parts.sampler,
                self.config.sampling,
                step=step,
                resolution=self.config.data.resolution,
                directory=self.workspace.samples,
                tensorboard=self.tensorboard,
                model=str(self.config.model.base),
            )
        self.progress(
            {
                "event": "sample",
                "step": step,
                "paths": [str(path) for path in paths],
                "message": f"previews of step {step}: {', '.join(path.name for path in paths)}",
            }
        )
        return paths

    def save(self, path: Path) -> Path | None:
        step = self.run.counters.step
        with self.inference(use_ema=self.config.training.ema.for_saves):
            if not all_finite(self.trained):
                raise diverged(self, f"the weights to save at step {step} are not finite, so nothing was saved")
            if not self.is_main:
                return None
            written = self.parts.save_model(path)
        self.progress({"event": "save", "step": step, "path": str(written), "message": f"saved: {written}"})
        return written

    def intermediate_save_path(self) -> Path:
        output = self.config.saving.output
        name = f"step-{self.run.counters.step:08d}{output.suffix}"
        return self.workspace.saves / name

    def validate(self) -> float | None:
        batches = self.parts.validation_batches
        if batches is None:
            return None
        with self.inference(use_ema=False):
            loss = validation_loss(
                self.parts.setup, batches(), self.run.precision, seed=self.config.training.seed, device=self.device
            )
        if loss is None:
            return None
        step = self.run.counters.step
        if self.is_main:
            self.tensorboard.scalars(step, {"loss/validation": loss})
        self.progress(
            {"event": "validation", "step": step, "loss": loss, "message": f"validation loss {loss:.5f} at {step}"}
        )
        return loss

    def log_step(self, record: StepRecord) -> None:
        """Record a finished step, read back from the device (`readback`): its loss, learning rates, speed."""
        run = self.run
        step, loss = record.step, record.loss
        smoothed = run.smoothed_loss.update(loss)
        self.throughput.tick(record.flops)
        steps_per_s = self.throughput.steps_per_second
        flops_per_s = self.throughput.flops_per_second
        names = [str(group.get("name", index)) for index, group in enumerate(run.optimizer.param_groups)]
        learning_rates = dict(zip(names, record.learning_rates or [], strict=True))
        record_fields = {
            "step": step,
            "epoch": record.epoch,
            "loss": loss,
            "smoothed_loss": smoothed,
            "grad_norm": record.grad_norm,
            "lr": learning_rates,
            "steps_per_s": steps_per_s,
            "images_per_s": steps_per_s * self.images_per_step,
            "flops_per_s": flops_per_s,
            "mfu": self.flops.utilisation(flops_per_s),
            **memory_use(self.device),
            "time": time.time(),
        }
        if self.config.training.compile and self.compile_seconds is None:
            self._report_compilation(record)
        if self.is_main:
            self.metrics.append(record_fields)
            scalars = {"loss/train": loss, "loss/smoothed": smoothed}
            scalars.update({f"lr/{name}": rate for name, rate in learning_rates.items()})
            self.tensorboard.scalars(step, scalars)
        remaining = self.total_steps - step
        eta = remaining / steps_per_s if steps_per_s > 0 else math.nan
        self.progress(
            {"event": "step", **record_fields, "total_steps": self.total_steps, "epochs": self.epochs, "eta_s": eta}
        )

    def _report_compilation(self, record: StepRecord) -> None:
        """The first step compiles the denoiser's blocks (or loads them from the cache): say how long it took."""
        from onetrainer.model_setup.compile import compile_cache_dir

        self.compile_seconds = record.seconds
        message = (
            f"compiled the denoiser's blocks in {record.seconds:.1f} s (step {record.step}; "
            f"cached in {compile_cache_dir()} for later runs)"
        )
        self.progress({"event": "compiled", "step": record.step, "seconds": record.seconds, "message": message})
