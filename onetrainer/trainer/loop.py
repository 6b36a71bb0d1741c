"""The training loop, written out: check -> load -> setup -> cache -> steps -> final save.

Each optimizer step: batches -> predict -> loss -> backward (accumulated over
`gradient_accumulation_steps` batches) -> unscale and clip -> finite check -> optimizer and scheduler
step -> EMA -> cadence checks (validation, previews, intermediate save, backup) -> metrics -> stop
request.

What makes a run resumable bit-exactly: the data plan is a pure function of (seed, epoch), every
random stream is part of a backup, side work (previews, validation) runs with those streams
preserved, and a backup is only ever taken between optimizer steps.

What keeps trained work from being lost: where the run writes is checked before anything loads; a
signal after the last step still gets the output written; a save that fails anyway leaves a backup
and says how to write the output from it; any interrupt names the newest backup.

Under torchrun every rank runs this same loop (see `distributed`): rank 0 fills the cache while the
others wait, each rank trains on its slice of every global batch, and the step's one read-back also
averages the loss over the ranks and tells every rank whether any of them was asked to stop or failed
in its forward or backward pass, so that all of them stop after the same step, back up together, and
none waits forever for the others.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING, Any

from onetrainer.trainer.backup import list_backups, resume_command
from onetrainer.trainer.destinations import (
    cache_dir,
    check_destinations,
    remove_stale_temporaries,
    removed_on_failure,
)
from onetrainer.trainer.distributed import (
    all_reduce_sum,
    any_rank,
    describe,
    join_world,
    leaders_first,
    leave_world,
    rank_seed,
)
from onetrainer.trainer.divergence import TrainingDiverged, diverged
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
from onetrainer.util.errors import Interrupted, OneTrainerError, RuntimeFailure, UserError
from onetrainer.util.seeding import seed_everything

if TYPE_CHECKING:
    import torch

    from onetrainer.trainer.distributed import World

BuildParts = Callable[..., TrainingParts]


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
    command: str = "onetrainer train CONFIG",
) -> TrainResult:
    """Run (or continue, with `resume`) the training `config` describes; see the module docstring.

    `command` is the command line that started the run (without `--resume`): messages that say how to
    continue add `--resume last` (or a backup's path) to it.
    """
    world, device = join_world(config.training.device)
    result = _train(config, world, device, build=build, resume=resume, progress=progress, command=command)
    leave_world(world)
    return result


def _train(
    config: TrainConfig,
    world: World,
    device: torch.device,
    *,
    build: BuildParts,
    resume: str | Path | None,
    progress: ProgressCallback,
    command: str,
) -> TrainResult:
    from onetrainer.trainer.sharding import uses_sharding
    from onetrainer.trainer.step import check_fused_backward

    rank = world.rank
    if not world.is_main:
        progress = _ignore
    workspace = Workspace(config.workspace)
    check_destinations(config)
    check_fused_backward(config.training, distributed=world.distributed)
    sharded = uses_sharding(config, world)
    backup = open_backup(config, workspace, resume, world)
    if rank == 0:
        _remove_stale_temporaries(config, progress)
    config_yaml = dump_config(config)
    seed_everything(rank_seed(config.training.seed, rank))

    session: Session | None = None
    try:
        with contextlib.ExitStack() as cleanup:
            # 1. Plan the data, load the model and set it up for the method; fill the cache (rank 0 first).
            with removed_on_failure(workspace.root, cache_dir(config), enabled=rank == 0):
                parts = build(
                    config, device=device, workspace=workspace, rank=rank, world_size=world.size, progress=progress
                )
            if parts.close is not None:
                cleanup.callback(parts.close)
            progress({"event": "status", "message": "preparing the data"})
            with leaders_first(world, "filling the data cache"):
                parts.data.fill_cache()

            # 2. Optimizer, schedule, precision, EMA, noise and cadences; restore the backup.
            session = start_session(
                config,
                parts,
                backup=backup,
                config_yaml=config_yaml,
                workspace=workspace,
                device=device,
                world=world,
                sharded=sharded,
                progress=progress,
                command=command,
            )
            stop = cleanup.enter_context(StopSignals())
            cleanup.callback(session.tensorboard.close, raise_errors=False)
            if rank == 0:
                _open_records(session, fresh=backup is None)
            set_optimizer_mode(session.run.optimizer, train=True)
            parts.setup.train()
            if backup is None and config.sampling.before_training:
                session.previews()

            # 3. Train; 4. final previews, backup and output.
            counters = session.run.counters
            training = config.training
            if world.distributed:
                batches = {"batch_size": training.batch_size, "accumulation": training.gradient_accumulation_steps}
                progress({"event": "status", "message": describe(world, device, **batches)})
            progress(
                {"event": "start", "step": counters.step, "total_steps": session.total_steps, "epochs": session.epochs}
            )
            if (requested := _agreed_stop(session, stop)) is not None:
                raise _stopped(session, requested)
            final_loss = _steps(session, stop)
            output = _finish(session, stop)
    except KeyboardInterrupt as interrupt:
        aborted = _aborted(workspace, session, str(interrupt), command)
        if aborted is None:
            raise
        raise aborted from None
    return TrainResult(counters.step, workspace.root, output, final_loss)


def _remove_stale_temporaries(config: TrainConfig, progress: ProgressCallback) -> None:
    removed = remove_stale_temporaries(config)
    if removed:
        message = f"removed {len(removed)} temporary file(s) that an interrupted earlier run left behind"
        progress({"event": "status", "message": message})


def _open_records(session: Session, *, fresh: bool) -> None:
    """Where this run's records start: an earlier run's move aside (see `workspace`), the config is written."""
    workspace = session.workspace
    if fresh and (archive := workspace.archive_earlier_run()) is not None:
        message = f"an earlier run's logs and previews in this workspace were moved to {archive}"
        session.progress({"event": "status", "message": message})
    atomic_write_text(workspace.config, session.config_yaml)


def _steps(session: Session, stop: StopSignals) -> float | None:
    """The loop over optimizer steps until the run's length, a stop request, or an error."""
    import torch

    config, run, setup, world = session.config, session.run, session.parts.setup, session.world
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

                # Forward and backward over the accumulated batches (a rank that fails here tells the others
                # in the read-back, when their gradients do not depend on it: not while sharded).
                loss_sum = torch.zeros((), device=session.device)
                failure: Exception | None = None
                try:
                    for batch in chunk:
                        with run.precision.autocast():
                            prediction = setup.predict(batch, run.generator)
                            loss = setup.loss(prediction, batch) / len(chunk)
                        session.step.backward(loss)
                        loss_sum += loss.detach().float()
                except Exception as error:
                    if not world.distributed or session.sharded:
                        raise
                    failure = error

                # Average the gradients over ranks and clip them; read back the mean loss, any rank's stop
                # request or failure; stop before the update if the loss or the gradients are not finite.
                phase = "update"
                read = _read_back(session, loss_sum, session.step.measure(), stop=stop, failed=failure is not None)
                if read.failed:
                    phase = "forward"
                    world.shared_failure = True
                    raise failure if failure is not None else _failed_elsewhere(counters.step + 1)
                loss_value = read.loss
                _check_finite(session, read.loss, read.grad_norm)

                # Step the optimizer and the schedule, fold the weights into the average.
                learning_rates = session.step.apply()
                counters.step += 1
                counters.position += len(chunk)
                epoch_ended = counters.epoch if counters.position >= batches_in_epoch else None
                if run.ema is not None:
                    run.ema.update(counters.step)
                phase = "between steps"

                # Cadences, metrics, and a requested stop (after the last step, `_finish` handles it).
                session.log_step(read.loss, learning_rates)
                _cadences(session, epoch_ended)
                if counters.step >= session.total_steps:
                    break
                if (requested := read.stop if world.distributed else stop.requested) is not None:
                    raise _stopped(session, requested)
            if counters.position >= batches_in_epoch:
                counters.epoch += 1
                counters.position = 0
    except (Interrupted, TrainingDiverged):
        raise
    except Exception:
        if world.failure_is_shared:
            _emergency_backup(session, phase, step_start)
        raise
    return loss_value


@dataclass(frozen=True)
class _ReadBack:
    loss: float
    """The step's loss, averaged over ranks."""
    grad_norm: float
    stop: str | None
    """The stop request all ranks act on: this rank's signal, or another rank's."""
    failed: bool
    """Whether the forward or backward pass failed on any rank."""


OTHER_RANK_STOP = "a stop request to another rank"


def _read_back(session: Session, loss_sum: Any, grad_norm: Any, *, stop: StopSignals, failed: bool) -> _ReadBack:
    """The step's loss and gradient norm on the host, in one device sync (the only one a step makes).

    With several ranks the same sync also brings, from one small all-reduce queued after the step's
    gradients, the sum of every rank's loss, stop request and failure: every rank reads the same mean
    loss and takes the same decisions. (The gradient norm is computed from averaged gradients, so it is
    the same on every rank already.)
    """
    import torch

    world = session.world
    requested = stop.requested
    if not world.distributed:
        loss, norm = torch.stack([loss_sum.float(), grad_norm.float().to(loss_sum.device)]).tolist()
        return _ReadBack(loss, norm, requested, failed)
    flags = torch.tensor([float(requested is not None), float(failed)], device=loss_sum.device)
    shared = all_reduce_sum(world, torch.cat([loss_sum.float().reshape(1), flags]))
    total, stops, failures, norm = torch.cat([shared, grad_norm.float().reshape(1).to(loss_sum.device)]).tolist()
    agreed = (requested or OTHER_RANK_STOP) if stops > 0 else None
    return _ReadBack(total / world.size, norm, agreed, failures > 0)


def _agreed_stop(session: Session, stop: StopSignals) -> str | None:
    """The stop request as every rank sees it: a signal to any rank stops all of them at the same point."""
    if any_rank(session.world, stop.requested is not None):
        return stop.requested or OTHER_RANK_STOP
    return None


def _failed_elsewhere(step: int) -> RuntimeFailure:
    return RuntimeFailure(f"another rank failed in step {step}; its error is in that rank's output")


def _check_finite(session: Session, loss: float, grad_norm: float) -> None:
    step = session.run.counters.step + 1
    if not math.isfinite(loss):
        raise diverged(session, f"the loss became {loss} at step {step}, before its update", before_step=step)
    if not math.isfinite(grad_norm) and not session.run.precision.skips_overflow:
        what = f"the gradients became non-finite at step {step} (loss {loss:.4g}), before its update"
        raise diverged(session, what, before_step=step)


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


def _finish(session: Session, stop: StopSignals) -> Path | None:
    """The end of the run: final previews, backup when its cadence is on, and the output.

    A stop asked for by now skips the previews but not the output, which is what the run is for. If
    the previews or the backup fail, an emergency backup keeps the run; if the save fails, the error
    says which backup holds the trained weights and how to write the output from it.
    """
    step = session.run.counters.step
    try:
        requested = _agreed_stop(session, stop)
        if requested is None and session.run.clocks["sample"].enabled and session.last_preview_step != step:
            session.previews()
        if (requested := _agreed_stop(session, stop)) is not None:
            message = f"{requested}: all {step} steps are done; writing the output, then stopping"
            session.progress({"event": "stopping", "step": step, "signal": requested, "message": message})
        if session.run.clocks["backup"].enabled and session.last_backup_step != step:
            session.backup()
    except TrainingDiverged:
        raise
    except Exception:
        if session.world.failure_is_shared:
            _emergency_backup(session, "between steps", {})
        raise
    try:
        output = session.save(session.config.saving.output)
    except TrainingDiverged:
        raise
    except Exception as error:
        if not session.world.failure_is_shared:
            raise
        raise _save_failed(session, error) from error
    session.tensorboard.close()
    session.progress({"event": "done", "step": step, "output": str(output), "message": f"finished at step {step}"})
    return output


def _stopped(session: Session, signal_name: str) -> Interrupted:
    """Back up the finished step (nothing to back up before the first) and say how to continue."""
    step = session.run.counters.step
    if step == 0:
        return Interrupted(f"stopped by {signal_name} before the first step; nothing was trained")
    if session.last_backup_step != step:
        message = f"{signal_name}: stopping after step {step}; writing a backup (press Ctrl-C again to abort at once)"
        session.progress({"event": "stopping", "step": step, "signal": signal_name, "message": message})
        session.backup()
    session.progress({"event": "stopped", "step": step, "signal": signal_name, "message": f"stopped at {step}"})
    return Interrupted(
        f"stopped by {signal_name} after step {step} of {session.total_steps}; a backup holds the run",
        where=str(session.last_backup_path or session.workspace.backups),
        hint=f"Continue with `{session.resume_command()}`.",
    )


def _aborted(workspace: Workspace, session: Session | None, by: str, command: str) -> Interrupted | None:
    """An interrupt that could not wait (a second Ctrl-C, or one while loading): name the newest backup.

    None when there is nothing to say: no backup, and training had not begun.
    """
    what = f"interrupted at once{f' by {by}' if by else ''}"
    backups = list_backups(workspace.backups)
    if backups:
        return Interrupted(
            f"{what}; every file written is complete, and the newest backup is {backups[-1].name}",
            where=str(backups[-1]),
            hint=f"Continue with `{resume_command(command)}`.",
        )
    if session is None:
        return None
    return Interrupted(
        f"{what} at step {session.run.counters.step}; no backup was written, so the run cannot be continued",
        hint="Press Ctrl-C once to stop after the current step with a backup; "
        "`saving.backup_every` also writes backups along the way.",
    )


def _save_failed(session: Session, error: Exception) -> OneTrainerError:
    """Training is done but the output could not be written: keep the weights in a backup, say where."""
    step = session.run.counters.step
    reason = error.message if isinstance(error, OneTrainerError) else f"{type(error).__name__}: {error}"
    try:
        path = session.backup() if session.last_backup_step != step else session.last_backup_path
    except Exception as backup_error:  # noqa: BLE001 - reported in the error raised instead
        kept, hint = f"the backup failed too ({backup_error}), so the trained weights are lost", None
    else:
        kept = f"the trained weights are safe in the backup {path}"
        hint = (
            f"Fix the cause, then `{session.resume_command()}` writes the output from that backup without "
            "training again (`saving.output` may change)."
        )
    failure = UserError if isinstance(error, UserError) else RuntimeFailure
    return failure(
        f"training finished at step {step}, but the output could not be written: {reason}; {kept}",
        where=str(session.config.saving.output),
        hint=hint,
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
