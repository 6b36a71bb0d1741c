"""The training loop, written out: check -> load -> setup -> cache -> steps -> final save.

Each optimizer step: batches -> predict -> loss -> backward (accumulated over
`gradient_accumulation_steps` batches) -> unscale and clip -> finite check -> optimizer and scheduler
step -> EMA -> metrics -> cadence checks (validation, previews, intermediate save, backup) -> stop
request. The step makes no host sync where the device runs ahead (CUDA): the finite check is decided
on the device, and the loss and metrics arrive `training.read_back_lag` steps later (`readback`);
anything that writes or stops reads every pending step first. (Gradients of weights held in CPU
memory, and a moving average kept there, are copied out when ready, and wait: `model_setup.offload`,
`trainer.updates`, `trainer.ema`.)

What makes a run resumable bit-exactly: the data plan is a pure function of (seed, epoch), every
random stream is part of a backup, side work (previews, validation) runs with those streams
preserved, and a backup is only ever taken between optimizer steps.

What keeps trained work from being lost: where the run writes is checked before anything loads; a
signal after the last step still gets the output written; a save that fails anyway leaves a backup
and says how to write the output from it; any interrupt names the newest backup.

Under torchrun every rank runs this same loop (see `distributed`): rank 0 fills the cache while the
others wait, each rank trains on its slice of every global batch, and the step's read-back also
averages the loss over the ranks and tells every rank whether any of them was asked to stop or failed
in its step (fetching its batches, `on_step`, forward or backward), summed on the device with the
step's values, so that however late they are read, all ranks stop after the same step, back up
together, and none waits forever for the others. A rank whose step failed trains no further until
then; the others skip their updates from that step on (`readback`). Rank 0's writes between steps
(metrics, backups, previews, the output) tell the others whether they failed (`distributed.together`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING, Any

from onetrainer.trainer.backup import Backup, list_backups, resume_command
from onetrainer.trainer.destinations import (
    cache_dir,
    check_destinations,
    remove_stale_temporaries,
    removed_on_failure,
)
from onetrainer.trainer.distributed import (
    any_rank,
    describe,
    join_world,
    leaders_first,
    leave_world,
    rank_seed,
    together,
)
from onetrainer.trainer.divergence import TrainingDiverged
from onetrainer.trainer.optimizers import set_optimizer_mode
from onetrainer.trainer.parts import TrainingParts
from onetrainer.trainer.readback import RankFailed, StepRecord
from onetrainer.trainer.session import ProgressCallback, Session
from onetrainer.trainer.signals import StopSignals
from onetrainer.trainer.start import check_init_files, check_same_plan, open_backup, start_session
from onetrainer.trainer.state import step_rng_snapshot
from onetrainer.trainer.workspace import Workspace, check_workspace_free, workspace_lock
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
    check_init_files(config)
    check_fused_backward(config.training, distributed=world.distributed)
    sharded = uses_sharding(config, world)
    if rank == 0:
        check_workspace_free(workspace.root)
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
                if rank == 0:
                    cleanup.enter_context(workspace_lock(workspace.root))
                parts = build(
                    config, device=device, workspace=workspace, rank=rank, world_size=world.size, progress=progress
                )
            if parts.close is not None:
                cleanup.callback(parts.close)
            progress({"event": "status", "message": "preparing the data"})
            with leaders_first(world, "filling the data cache"):
                parts.data.fill_cache()
            check_same_plan(world, parts)

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
            with together(world, "opening the run's records"):
                if rank == 0:
                    _open_records(session, resumed=backup)
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


def _open_records(session: Session, *, resumed: Backup | None) -> None:
    """Where this run's records start: an earlier run's move aside (see `workspace`), the config is written.

    A run resumed from a backup older than the workspace's newest leaves the steps after it: their backups
    are moved aside too, or `--resume last` and pruning (which go by step) would take the abandoned ones
    for this run's, and so are their saves and previews, which would pass for this run's."""
    workspace = session.workspace
    if resumed is None and (archive := workspace.archive_earlier_run()) is not None:
        message = f"an earlier run's logs and previews in this workspace were moved to {archive}"
        session.progress({"event": "status", "message": message})
    if resumed is not None and (archive := workspace.archive_steps_after(resumed.path)) is not None:
        message = (
            f"the backups, saves and previews after step {resumed.step}, which this run leaves, were moved to {archive}"
        )
        session.progress({"event": "status", "message": message})
    atomic_write_text(workspace.config, session.config_yaml)


def _steps(session: Session, stop: StopSignals) -> float | None:
    """The loop over optimizer steps until the run's length, a stop request, or an error."""
    import torch

    config, run, setup, world = session.config, session.run, session.parts.setup, session.world
    results = session.results
    counters = run.counters
    accumulation = config.training.gradient_accumulation_steps
    loss_value: float | None = None
    failure: Exception | None = None  # this rank's failed pass, until every rank reads of it (several ranks)
    phase = "between steps"
    step_start = step_rng_snapshot(run.generator)
    _announce_compilation(session)
    results.restart_clock()
    try:
        while counters.step < session.total_steps:
            batches_in_epoch = session.parts.batches_in_epoch(counters.epoch)
            data = session.parts.data.batches(counters.epoch, start=counters.position)
            while counters.position < batches_in_epoch:
                size = min(accumulation, batches_in_epoch - counters.position)
                phase, step_start = "forward", step_rng_snapshot(run.generator)

                # Fetch the accumulated batches (decoded here when the cache is off), forward and backward
                # (a rank that fails in any of it tells the others in the read-back, when their gradients do
                # not depend on it: not while sharded; until they read it, it fetches and trains no more, but
                # steps along with them, which the plan's count of batches allows).
                loss_sum = torch.zeros((), device=session.device)
                if failure is None:
                    try:
                        setup.on_step(counters.step, counters.epoch)
                        for batch in islice(data, size):
                            with run.precision.autocast():
                                prediction = setup.predict(batch, run.generator)
                                loss = setup.loss(prediction, batch) / size
                            session.step.backward(loss)
                            loss_sum += loss.detach().float()
                            session.flops.add(batch)
                    except Exception as error:
                        if not world.distributed or session.sharded:
                            raise
                        failure = error

                # Average the gradients over ranks and clip them; the NaN guard: a non-finite loss or
                # gradient (or a failure on any rank) stops the run before the update, read here, or
                # decided on the device, which then skips the update (see `readback`). The read-back also
                # brings the mean loss over the ranks and whether any of them was asked to stop.
                phase = "update"
                grad_norm = session.step.measure()
                skip = results.measure(
                    counters.step + 1,
                    loss_sum,
                    grad_norm,
                    stop=stop.requested is not None,
                    failed=failure is not None,
                )

                # Step the optimizer and the schedule, fold the weights into the average.
                learning_rates = session.step.apply(skip)
                counters.step += 1
                counters.position += size
                results.finish(counters.epoch, learning_rates, session.flops.take())
                epoch_ended = counters.epoch if counters.position >= batches_in_epoch else None
                if run.ema is not None:
                    run.ema.update(counters.step)
                phase = "between steps"

                # Metrics of the steps read back, cadences, and a requested stop (after the last step,
                # `_finish` handles it).
                loss_value = _log(session, results.ready(), loss_value)
                _cadences(session, epoch_ended)
                if counters.step >= session.total_steps:
                    break
                if (requested := _requested(session, stop)) is not None:
                    raise _stopped(session, requested)
            if counters.position >= batches_in_epoch:
                counters.epoch += 1
                counters.position = 0
        loss_value = _log(session, results.ready(everything=True), loss_value)
    except (Interrupted, TrainingDiverged):
        raise
    except RankFailed as failed:
        # Read on every rank at the same step: this rank raises its own error, the others one that points to it.
        world.shared_failure = True
        if failed.before_update:
            _emergency_backup(session, "forward", step_start)
        else:
            _no_emergency_backup(session, failed.step)
        raise (failure if failure is not None else _failed_elsewhere(failed.step)) from None
    except Exception:
        if world.failure_is_shared:
            _emergency_backup(session, "update" if session.step.updated_in_backward else phase, step_start)
        raise
    return loss_value


def _log(session: Session, records: list[StepRecord], loss: float | None = None) -> float | None:
    """Log steps read back from the device (checked as they were read); returns the newest loss, else `loss`."""
    for record in records:
        session.log_step(record)
    return records[-1].loss if records else loss


OTHER_RANK_STOP = "a stop request to another rank"


def _requested(session: Session, stop: StopSignals) -> str | None:
    """The stop request to act on after this step.

    In one process, a signal at once. With several ranks, any rank's request as read back with a step's
    values: every rank reads it after the same step (however late), so all of them stop there together.
    """
    if not session.world.distributed:
        return stop.requested
    return (stop.requested or OTHER_RANK_STOP) if session.results.stop_read else None


def _agreed_stop(session: Session, stop: StopSignals) -> str | None:
    """The stop request as every rank sees it: a signal to any rank stops all of them at the same point."""
    if any_rank(session.world, stop.requested is not None):
        return stop.requested or OTHER_RANK_STOP
    return None


def _failed_elsewhere(step: int) -> RuntimeFailure:
    return RuntimeFailure(f"another rank failed in step {step}; its error is in that rank's output")


def _no_emergency_backup(session: Session, step: int) -> None:
    """A failure read back after later steps: those skipped their updates, but the schedule, the moving
    average and the random streams moved on, so no state of the run is exact enough to back up."""
    message = (
        f"no emergency backup: the failure in step {step} was read back after step {session.run.counters.step}, "
        f"when the run had moved on; {_newest_backup(session)}"
    )
    session.progress({"event": "warning", "message": message})


def _newest_backup(session: Session) -> str:
    """Where a run left without an emergency backup can continue from, in words."""
    newest = session.last_backup_path
    return f"the newest backup is {newest}" if newest else "there is no backup"


def _settle(session: Session) -> None:
    """Read, check and log every step still on its way from the device: before a backup, a save, a stop."""
    _log(session, session.results.ready(everything=True))


def _announce_compilation(session: Session) -> None:
    if session.config.training.compile:
        from onetrainer.model_setup.compile import compile_cache_dir

        message = f"the first step compiles the denoiser's blocks (kept in {compile_cache_dir()} for later runs)"
        session.progress({"event": "status", "message": message})


def _cadences(session: Session, epoch_ended: int | None) -> None:
    step = session.run.counters.step
    clocks = session.run.clocks
    due = [
        (name, work)
        for name, work in (
            ("validate", session.validate),
            ("sample", session.previews),
            ("save", lambda: session.save(session.intermediate_save_path())),
            ("backup", session.backup),
        )
        if clocks[name].due(step, epoch_ended=epoch_ended)
    ]
    if due:
        _settle(session)
    for name, work in due:
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
    _settle(session)
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
    when the step began makes the backup exact; during the update (or once a fused backward pass began
    updating) the state is half-changed, so no backup is written, the last regular one stays the newest,
    and a warning says so. Steps still on their way from the
    device are read first: if one of them diverged, no backup is written either. A failing
    emergency backup is reported, never raised: the error that caused it is the one the user must see.
    """
    if session.last_backup_step == session.run.counters.step:
        return
    if phase == "update":
        message = (
            f"no emergency backup: the error came while step {session.run.counters.step + 1} was updating the "
            f"weights, which are half-changed; {_newest_backup(session)}"
        )
        session.progress({"event": "warning", "message": message})
        return
    try:
        _settle(session)
    except TrainingDiverged as divergence:
        session.progress({"event": "warning", "message": f"no emergency backup: {divergence.message}"})
        return
    try:
        path = session.backup(step_snapshot=step_start if phase == "forward" else None)
    except Exception as error:  # noqa: BLE001 - reported; the original error is re-raised by the caller
        session.progress({"event": "warning", "message": f"the emergency backup failed too: {error}"})
        return
    if path is not None:
        session.progress({"event": "status", "message": f"emergency backup written: {path}"})
