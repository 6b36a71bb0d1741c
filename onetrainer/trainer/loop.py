"""The training loop, written out: load -> setup -> cache -> steps -> final save.

Each optimizer step: batches -> predict -> loss -> backward (accumulated over
`gradient_accumulation_steps` batches) -> unscale and clip -> optimizer and scheduler step -> EMA ->
cadence checks (validation, previews, intermediate save, backup) -> metrics -> stop request.

What makes a run resumable bit-exactly: the data plan is a pure function of (seed, epoch), every
random stream is part of a backup, side work (previews, validation) runs with those streams
preserved, and a backup is only ever taken between optimizer steps.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any

from onetrainer.trainer.device import distributed_rank, resolve_device
from onetrainer.trainer.optimizers import set_optimizer_mode
from onetrainer.trainer.parts import TrainingParts
from onetrainer.trainer.session import ProgressCallback, Session
from onetrainer.trainer.signals import StopSignals
from onetrainer.trainer.start import open_backup, start_session
from onetrainer.trainer.state import step_rng_snapshot
from onetrainer.trainer.workspace import Workspace
from onetrainer.util.atomic import atomic_write_text
from onetrainer.util.config.loader import dump_config
from onetrainer.util.config.schema import TrainConfig
from onetrainer.util.config.training import Precision
from onetrainer.util.errors import Interrupted, RuntimeFailure
from onetrainer.util.seeding import seed_everything

BuildParts = Callable[..., TrainingParts]


class TrainingDiverged(RuntimeFailure):
    """The loss became NaN or infinite; nothing is saved, so the last good backup stays the newest."""

    title = "Training diverged"


@dataclass
class TrainResult:
    step: int
    workspace: Path
    output: Path | None
    final_loss: float | None


def _ignore(_: dict[str, Any]) -> None:
    """Default progress callback: report nothing."""


def train(
    config: TrainConfig,
    *,
    build: BuildParts,
    resume: str | Path | None = None,
    progress: ProgressCallback = _ignore,
    resume_command: str = "onetrainer train CONFIG --resume last",
) -> TrainResult:
    """Run (or continue, with `resume`) the training `config` describes; see the module docstring."""
    rank, world_size = distributed_rank()
    workspace = Workspace(config.workspace)
    device = resolve_device(config.training.device)
    backup = open_backup(config, workspace, resume)
    config_yaml = dump_config(config)
    if rank == 0:
        atomic_write_text(workspace.config, config_yaml)
    seed_everything(config.training.seed)

    with contextlib.ExitStack() as cleanup:
        # 1. Plan the data, load the model and set it up for the method; fill the cache.
        parts = build(config, device=device, workspace=workspace, rank=rank, world_size=world_size, progress=progress)
        if parts.close is not None:
            cleanup.callback(parts.close)
        progress({"event": "status", "message": "preparing the data"})
        parts.data.fill_cache()

        # 2. Optimizer, schedule, precision, EMA, noise and cadences; restore the backup.
        session, trained = start_session(
            config,
            parts,
            backup=backup,
            config_yaml=config_yaml,
            workspace=workspace,
            device=device,
            rank=rank,
            world_size=world_size,
            progress=progress,
        )
        cleanup.callback(session.tensorboard.close, raise_errors=False)
        set_optimizer_mode(session.run.optimizer, train=True)
        parts.setup.train()
        if backup is None and config.sampling.before_training:
            session.previews()

        # 3. Train; 4. final previews, backup and output.
        counters = session.run.counters
        progress(
            {"event": "start", "step": counters.step, "total_steps": session.total_steps, "epochs": session.epochs}
        )
        with StopSignals() as stop:
            final_loss = _steps(session, trained, stop, resume_command)
        output = _finish(session)
    return TrainResult(counters.step, workspace.root, output, final_loss)


def _steps(session: Session, trained: list[Any], stop: StopSignals, resume_command: str) -> float | None:
    """The loop over optimizer steps until the run's length, a stop request, or an error."""
    import torch

    config, run, setup = session.config, session.run, session.parts.setup
    counters = run.counters
    accumulation = config.training.gradient_accumulation_steps
    loss_value: float | None = None
    phase = "between steps"
    step_start = step_rng_snapshot(run.generator)
    try:
        while counters.step < session.total_steps:
            batches_in_epoch = session.parts.batches_in_epoch(counters.epoch)
            data = session.parts.data.batches(counters.epoch, start=counters.position)
            for chunk in _chunks(data, accumulation):
                phase, step_start = "forward", step_rng_snapshot(run.generator)
                setup.on_step(counters.step, counters.epoch)

                # Forward and backward over the accumulated batches.
                loss_sum = torch.zeros((), device=session.device)
                for batch in chunk:
                    with run.precision.autocast():
                        prediction = setup.predict(batch, run.generator)
                        loss = setup.loss(prediction, batch) / len(chunk)
                    run.precision.backward(loss)
                    loss_sum += loss.detach().float()
                loss_value = float(loss_sum)
                if not math.isfinite(loss_value):
                    raise _diverged(session, loss_value)

                # Clip, step the optimizer and the schedule, fold the weights into the average.
                phase = "update"
                run.precision.unscale(run.optimizer)
                if config.training.max_grad_norm is not None:
                    torch.nn.utils.clip_grad_norm_(trained, config.training.max_grad_norm)
                run.precision.step(run.optimizer)
                learning_rates = [float(group["lr"]) for group in run.optimizer.param_groups]
                run.scheduler.step()
                run.optimizer.zero_grad(set_to_none=True)
                counters.step += 1
                counters.position += len(chunk)
                epoch_ended = counters.epoch if counters.position >= batches_in_epoch else None
                if run.ema is not None:
                    run.ema.update(counters.step)
                phase = "between steps"

                # Cadences, metrics, and a requested stop.
                session.log_step(loss_value, learning_rates)
                _cadences(session, epoch_ended)
                if stop.requested is not None:
                    raise _stopped(session, stop.requested, resume_command)
                if counters.step >= session.total_steps:
                    break
            if counters.position >= batches_in_epoch:
                counters.epoch += 1
                counters.position = 0
    except (Interrupted, TrainingDiverged):
        raise
    except Exception:
        _emergency_backup(session, phase, step_start)
        raise
    return loss_value


def _cadences(session: Session, epoch_ended: int | None) -> None:
    step = session.run.counters.step
    clocks = session.run.clocks
    for name, work in (
        ("validate", session.validate),
        ("sample", session.previews),
        ("save", lambda: session.save(session.intermediate_save_path())),
        ("backup", session.backup),
    ):
        if clocks[name].due(step, epoch_ended=epoch_ended):
            work()
            clocks[name].fired()


def _finish(session: Session) -> Path | None:
    """The end of the run: final previews and backup when their cadence is on, and the output."""
    step = session.run.counters.step
    if session.run.clocks["sample"].enabled and session.last_preview_step != step:
        session.previews()
    if session.run.clocks["backup"].enabled and session.last_backup_step != step:
        session.backup()
    output = session.save(session.config.saving.output)
    session.tensorboard.close()
    session.progress({"event": "done", "step": step, "output": str(output), "message": f"finished at step {step}"})
    return output


def _stopped(session: Session, signal_name: str, resume_command: str) -> Interrupted:
    step = session.run.counters.step
    path = session.backup() if session.last_backup_step != step else None
    where = str(path or session.workspace.backups)
    session.progress({"event": "stopped", "step": step, "signal": signal_name, "message": f"stopped at {step}"})
    return Interrupted(
        f"stopped by {signal_name} after step {step} of {session.total_steps}; a backup holds the run",
        where=where,
        hint=f"Continue with `{resume_command}`.",
    )


def _diverged(session: Session, loss: float) -> TrainingDiverged:
    step = session.run.counters.step + 1
    training = session.config.training
    last = session.last_backup_step
    kept = f"the last good backup (step {last}) is intact" if last is not None else "no backup was written yet"
    hints = ["lower training.learning_rate", "keep training.max_grad_norm on"]
    half = [name for name, dtype in training.weight_dtypes.items() if dtype is Precision.FP16]
    if half:
        hints.insert(0, f"fp16 weights overflow easily: set training.weight_dtypes.{half[0]}=fp32")
    if training.precision is Precision.FP16 or session.config.model.dtype is Precision.FP16:
        hints.insert(0, "fp16 overflows easily (the VAE especially): try bf16 or fp32")
    return TrainingDiverged(
        f"the loss became {loss} at step {step}; training stopped and {kept}",
        where=str(session.workspace.backups),
        hint="; ".join(hints) + ".",
    )


def _emergency_backup(session: Session, phase: str, step_start: dict[str, Any]) -> None:
    """After an unexpected error, back up the last complete step if the state is consistent.

    Before the optimizer step the weights still hold the previous step, and the RNG snapshot taken
    when the step began makes the backup exact; during the update the state is half-changed, so no
    backup is written and the last regular one stays the newest. A failing emergency backup is
    reported, never raised: the error that caused it is the one the user must see.
    """
    if phase == "update" or session.last_backup_step == session.run.counters.step:
        return
    try:
        path = session.backup(step_snapshot=step_start if phase == "forward" else None)
    except Exception as error:  # noqa: BLE001 - reported; the original error is re-raised by the caller
        session.progress({"event": "warning", "message": f"the emergency backup failed too: {error}"})
        return
    if path is not None:
        session.progress({"event": "status", "message": f"emergency backup written: {path}"})


def _chunks(batches: Iterable[Any], size: int) -> Iterator[list[Any]]:
    iterator = iter(batches)
    while chunk := list(islice(iterator, size)):
        yield chunk
