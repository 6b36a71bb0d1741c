"""A running training session: the objects the loop works on, and its side work between steps.

The loop in `loop.py` decides *when* (cadences, signals, the end of the run); this module does the
*what*: writing a backup, drawing previews, saving, measuring validation loss and logging a step.
Only rank 0 writes files (a sharded run's backup excepted: each rank writes its shards); previews,
saves and validation run with the training RNG streams preserved, in eval mode, and with the EMA
weights where configured. Backups and saves check first that the weights they would write are finite
(on every rank, so that all of them stop together).

With several ranks each of these is called on every rank, at the same point: a backup gathers every
rank's random streams, validation averages every rank's share, a sharded model's previews and saves
need every rank to gather weights, and work only rank 0 does still tells the others whether it failed
(`distributed.together`), so that no rank is left waiting for the others.
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
from onetrainer.trainer.backup import backup_name, prune_backups, resume_command, write_backup
from onetrainer.trainer.device import memory_use
from onetrainer.trainer.distributed import World, all_ranks, gather_objects, sum_over_ranks, together
from onetrainer.trainer.divergence import all_finite, diverged
from onetrainer.trainer.flops import StepFlops
from onetrainer.trainer.metrics import MetricsLog, Throughput
from onetrainer.trainer.optimizers import evaluation_weights
from onetrainer.trainer.parts import TrainingParts
from onetrainer.trainer.previews import draw_previews
from onetrainer.trainer.readback import StepRecord, StepResults
from onetrainer.trainer.resume import compute_record
from onetrainer.trainer.state import RunState, capture_rng
from onetrainer.trainer.step import StepStrategy
from onetrainer.trainer.tensorboard import TensorBoardLog
from onetrainer.trainer.validation import validation_sums
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
    world: World
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
    skipped_in_a_row: int = 0
    """fp16 steps skipped in a row for non-finite gradients (`divergence.check_step`)."""
    sharded: list[Any] = field(default_factory=list)
    """The components sharded across the ranks (FSDP); empty when every rank holds the trained weights."""

    @property
    def is_main(self) -> bool:
        return self.world.is_main

    @property
    def images_per_step(self) -> int:
        training = self.config.training
        return training.batch_size * training.gradient_accumulation_steps * self.world.size

    def weights_finite(self) -> bool:
        """Whether every trained weight is finite, on every rank (each checks its own shards)."""
        from onetrainer.trainer.sharding import local_tensors

        return all_ranks(self.world, all_finite(local_tensors(self.trained)))

    @contextlib.contextmanager
    def inference(self, *, use_ema: bool) -> Iterator[None]:
        """Eval mode, untouched RNG streams, compiled blocks run uncompiled (`model_setup.compile.eager`), and the
        averaged weights if asked, for the block.

        A sharded model is resharded after the block: FSDP keeps the weights its outermost module
        gathered for a forward pass without backward, and the next training step would otherwise run
        on them (the averaged weights, after previews that showed them).
        """
        setup = self.parts.setup
        ema = self.run.ema if use_ema else None
        with evaluation_weights(self.run.optimizer):
            setup.eval()
            try:
                with preserved_rng(), eager(), ema.applied() if ema is not None else contextlib.nullcontext():
                    yield
            finally:
                if self.sharded:
                    from onetrainer.trainer.sharding import reshard

                    reshard(self.sharded)
                setup.train()
        self.throughput.restart()

    def resume_command(self, backup: Path | None = None) -> str:
        """The command that continues this run from its newest backup, or from `backup`."""
        return resume_command(self.command, backup)

    def backup(self, *, step_snapshot: dict[str, Any] | None = None) -> Path:
        """Back up the run after its last optimizer step (or as `step_snapshot` says it began); every rank calls it."""
        step = self.run.counters.step
        if not self.weights_finite():
            raise diverged(self, f"the weights became non-finite in the update of step {step}, so it was not backed up")
        ranks_rng = gather_objects(self.world, capture_rng(self.run.generator, step_snapshot))
        state = (
            self.run.state_dict(step_snapshot, ranks_rng=ranks_rng, sharded=bool(self.sharded)) if ranks_rng else None
        )
        if state is not None:
            state["data"] = self.parts.data.fingerprint()
            state["compute"] = compute_record(self.device)
        path = self.workspace.backups / backup_name(step)
        with together(self.world, "writing a backup"):
            if self.sharded:
                self._write_sharded_backup(state)
            elif self.is_main and state is not None:
                write_backup(
                    self.workspace.backups,
                    step=step,
                    epoch=self.run.counters.epoch,
                    weights=self.parts.setup.trainable_state_dict(),
                    state=state,
                    config_yaml=self.config_yaml,
                    world_size=self.world.size,
                )
            if self.is_main:
                prune_backups(self.workspace.backups, self.config.saving.backup_keep_last)
        self.last_backup_step = step
        self.last_backup_path = path
        self.progress({"event": "backup", "step": step, "path": str(path), "message": f"backup written: {path}"})
        return path

    def _write_sharded_backup(self, state: dict[str, Any] | None) -> None:
        from onetrainer.trainer.sharding import sharded_payload, write_sharded_backup

        write_sharded_backup(
            self.world,
            self.workspace.backups,
            step=self.run.counters.step,
            epoch=self.run.counters.epoch,
            payload=sharded_payload(self.parts.setup, self.run.optimizer, self.run.ema),
            state=state,
            config_yaml=self.config_yaml,
        )

    def previews(self) -> list[Path]:
        """Rank 0 draws and writes the previews; with a sharded model every rank draws them (each forward
        pass needs every rank's shards) and only rank 0 writes."""
        step = self.run.counters.step
        self.last_preview_step = step
        paths: list[Path] = []
        sampler = self.parts.sampler
        if not self.config.sampling.prompts:
            return paths
        with together(self.world, "drawing the previews"):
            if sampler is not None and (self.is_main or self.sharded):
                with self.inference(use_ema=self.config.training.ema.for_samples):
                    paths = draw_previews(
                        sampler,
                        self.config.sampling,
                        step=step,
                        resolution=self.config.data.resolution,
                        directory=self.workspace.samples,
                        tensorboard=self.tensorboard,
                        model=str(self.config.model.base),
                        write=self.is_main,
                    )
        if paths:
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
        """Write the output (rank 0; a sharded model's full weights are gathered to it first); every rank calls it."""
        step = self.run.counters.step
        written: Path | None = None
        with self.inference(use_ema=self.config.training.ema.for_saves):
            if not self.weights_finite():
                raise diverged(self, f"the weights to save at step {step} are not finite, so nothing was saved")
            with together(self.world, "writing the output"), self._gathered():
                if self.is_main:
                    written = self.parts.save_model(path)
        if written is not None:
            self.progress({"event": "save", "step": step, "path": str(written), "message": f"saved: {written}"})
        return written

    def _gathered(self) -> contextlib.AbstractContextManager[None]:
        if not self.sharded:
            return contextlib.nullcontext()
        from onetrainer.trainer.sharding import gathered

        return gathered(self.world, self.sharded)

    def intermediate_save_path(self) -> Path:
        output = self.config.saving.output
        name = f"step-{self.run.counters.step:08d}{output.suffix}"
        return self.workspace.saves / name

    def validate(self) -> float | None:
        """The mean validation loss over the samples of every rank's share of the validation batches."""
        batches = self.parts.validation_batches
        if batches is None:
            return None
        with together(self.world, "measuring the validation loss"), self.inference(use_ema=False):
            total, count = validation_sums(
                self.parts.setup, batches(), self.run.precision, seed=self.config.training.seed, device=self.device
            )
        summed, samples_measured = sum_over_ranks(self.world, total, count)
        if samples_measured == 0:
            return None
        loss = summed / samples_measured
        step = self.run.counters.step
        with together(self.world, "logging the validation loss"):
            if self.is_main:
                self.tensorboard.scalars(step, {"loss/validation": loss})
        self.progress(
            {"event": "validation", "step": step, "loss": loss, "message": f"validation loss {loss:.5f} at {step}"}
        )
        return loss

    def log_step(self, record: StepRecord) -> None:
        """Record a finished step, read back from the device (`readback`): its loss, learning rates, speed.

        Rank 0's writes (metrics, TensorBoard) tell the others whether they failed: one small agreement on
        the host per step, so that a full disk stops every rank at this step with a backup, not rank 0 alone.
        """
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
        with together(self.world, "logging a step"):
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
