"""Starting a run: checks before anything loads, then the optimizer and friends, restored from a backup.

The step's helpers are chosen here too: how the loss and gradient norm are read back (`readback`,
with the lag `training.read_back_lag` resolves to) and how each step's FLOPs are counted (`flops`).

Everything here happens once, before the first step; `loop.py` then only trains. With several ranks,
this is where the trained components are sharded (FSDP) or the trained tensors broadcast from rank 0,
every rank seeds its own noise generator, the step strategy learns to average gradients, and the
read-back to agree on the loss and on stopping (on the device, so a lagged read still agrees).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from onetrainer.trainer.backup import (
    Backup,
    backup_world_size,
    damaged_backups,
    find_backup,
    list_backups,
    read_backup,
)
from onetrainer.trainer.cadence import CadenceClock
from onetrainer.trainer.distributed import World, average_gradients, broadcast_parameters, differing, rank_seed
from onetrainer.trainer.divergence import all_finite, check_step
from onetrainer.trainer.ema import ModelEma
from onetrainer.trainer.flops import StepFlops, count_flops, counted_on, device_peak, step_pass
from onetrainer.trainer.metrics import MetricsLog, SmoothedValue
from onetrainer.trainer.optimizers import build_optimizer, resolve_parameter_groups
from onetrainer.trainer.parts import TrainingParts
from onetrainer.trainer.precision import MixedPrecision
from onetrainer.trainer.readback import StepResults, resolve_lag
from onetrainer.trainer.resume import (
    check_resume_compatible,
    last_bits_changes,
    optimizer_settings,
    reapply_settings,
)
from onetrainer.trainer.schedulers import build_lr_scheduler, resolve_warmup_steps
from onetrainer.trainer.session import ProgressCallback, Session
from onetrainer.trainer.state import Counters, RunState
from onetrainer.trainer.step import build_step, clip_gradients
from onetrainer.trainer.tensorboard import TensorBoardLog
from onetrainer.trainer.updates import offload_to_cpu
from onetrainer.trainer.workspace import Workspace
from onetrainer.util.config.schema import TrainConfig
from onetrainer.util.config.training import EmaDevice
from onetrainer.util.enums import TrainingMethod
from onetrainer.util.errors import UserError

if TYPE_CHECKING:
    import torch


def check_same_plan(world: World, parts: TrainingParts) -> None:
    """Refuse to train when the ranks planned different data.

    Every rank scans the data folders itself (rank 0 first); if a folder changes in between (still being
    copied or synced), the ranks would train different numbers of steps per epoch and their collective
    calls would go out of step: a gloo error, or with NCCL a hang. The plans' fingerprints name the
    samples and the batches per epoch (`LoopData.fingerprint`).
    """
    plans = differing(world, (parts.data.fingerprint(), parts.batches_in_epoch(0)))
    if plans is None:
        return
    found = ", ".join(
        f"rank {rank}: {batches} batches per epoch (plan {fingerprint})"
        for rank, (fingerprint, batches) in enumerate(plans)
    )
    raise UserError(
        f"the training processes planned different data ({found})",
        where="data.concepts",
        hint="The data changed while the processes started (a folder still being copied or synced?); "
        "run again once it is complete.",
    )


def open_backup(
    config: TrainConfig, workspace: Workspace, resume: str | Path | None, world: World | None = None
) -> Backup | None:
    """The backup to continue (checked against `config` and the number of ranks), or None for a fresh run.

    A fresh run refuses a workspace that already holds backups (it would roll them away) and an
    existing output (it would be replaced hours later), unless `saving.overwrite` says so. A backup
    with non-finite weights (only an earlier version wrote such) cannot continue anything.
    """
    if resume is not None:
        path = find_backup(workspace.backups, resume)
        check_world_size(path, world.size if world is not None else 1)
        backup = read_backup(path)
        check_resume_compatible(config, backup.config_yaml, where=str(path))
        if not all_finite(backup.weights.values()):
            others = [other.name for other in list_backups(path.parent) if other != path]
            raise UserError(
                "this backup holds non-finite (NaN or infinite) weights, so training cannot continue from it",
                where=str(path),
                hint=f"Pass an earlier backup folder with `--resume PATH` ({', '.join(others)})."
                if others
                else "No other backup is there: start a new run.",
            )
        return backup
    if list_backups(workspace.backups):
        raise UserError(
            f"the workspace already holds the backups of a run: {workspace.backups}",
            hint="Continue it with `--resume last`, or give this run its own `workspace=...` folder.",
        )
    damaged = damaged_backups(workspace.backups)
    if damaged:
        path, problem = damaged[-1]
        raise UserError(
            f"the workspace already holds the backups of a run, damaged ones: {path.name} cannot be resumed "
            f"({problem})",
            where=str(workspace.backups),
            hint="Give this run its own `workspace=...` folder, or move the damaged backups out of the way.",
        )
    if config.saving.output.exists() and not config.saving.overwrite:
        raise UserError(
            f"the output already exists: {config.saving.output}",
            hint="Choose another `saving.output`, or set `saving.overwrite=true` to replace it.",
        )
    return None


def check_world_size(path: Path, size: int) -> None:
    """A run continues with as many ranks as trained its backup.

    What each rank trains on at each step (its slice of the global batch, whose size is ranks × batch)
    and its noise stream follow from the number of ranks (and a sharded backup holds one part of the
    weights per rank), so no other number can continue the run as it would have gone on.
    """
    saved = backup_world_size(path)
    if saved == size:
        return
    processes = f"{saved} process{'es' if saved != 1 else ''}"
    launch = (
        "one process (without --gpus or torchrun)"
        if saved == 1
        else f"{saved} processes (`--gpus {saved}`, or torchrun --nproc_per_node)"
    )
    raise UserError(
        f"this backup was trained by {processes} and this run has {size}: each process's slice of every "
        "global batch and its noise stream depend on that number, so the run cannot continue exactly with "
        "another",
        where=str(path),
        hint=f"Resume with {launch}, or start a new run in a new workspace.",
    )


def optimizer_steps(batches: int, accumulation: int) -> int:
    """A last, shorter accumulation group still makes a step: no batch of an epoch is dropped."""
    return math.ceil(batches / accumulation)


def _continue_on_changed_data(counters: Counters, batches_in_epoch: Callable[[int], int]) -> str:
    """Continue a resumed run on data that changed since its backup; says how. An epoch now shorter than the
    batches it had trained is over: the next one starts."""
    message = (
        "the data changed since this backup (images added, removed or resized, or dropped as unreadable): "
        "the run continues on the data as it is now, not with the batches it would have had"
    )
    length = batches_in_epoch(counters.epoch)
    if counters.position > length:
        message += (
            f"; the epoch in progress now has {length} batches, fewer than the {counters.position} it had trained "
            "on, so the next epoch starts"
        )
        counters.position = length
    return message


def run_length(batches_in_epoch: Callable[[int], int], config: TrainConfig) -> tuple[int, int]:
    """(optimizer steps in the run, epochs it spans); `max_steps` wins over `epochs`."""
    training = config.training
    accumulation = training.gradient_accumulation_steps
    if batches_in_epoch(0) == 0:
        raise UserError(
            "there is nothing to train on: the data plan has no batches",
            hint="Check data.concepts: their folders, `enabled`, and that not all are validation concepts.",
        )
    if training.max_steps is None:
        total = sum(optimizer_steps(batches_in_epoch(epoch), accumulation) for epoch in range(training.epochs))
        return total, training.epochs
    steps, epochs = 0, 0
    while steps < training.max_steps:
        steps += optimizer_steps(batches_in_epoch(epochs), accumulation)
        epochs += 1
    return training.max_steps, epochs


def check_init_files(config: TrainConfig) -> None:
    """The LoRA and embedding files a run starts from, read as far as their headers before the model loads:
    an unreadable file, or a LoRA given as an embedding, must not cost a model load to find."""
    from onetrainer.util.detect import EMBEDDING, LORA, check_adapter_file

    if config.method is TrainingMethod.LORA and config.lora.init_from is not None:
        check_adapter_file(config.lora.init_from, LORA, where="lora.init_from")
    own = config.method is TrainingMethod.EMBEDDING
    embeddings = [("embedding.init_from", config.embedding.init_from)] if own else []
    additional = enumerate(config.embedding.additional)
    embeddings += [(f"embedding.additional.{index}.init_from", extra.init_from) for index, extra in additional]
    for key, path in embeddings:
        if path is not None:
            check_adapter_file(path, EMBEDDING, where=key)


def start_session(
    config: TrainConfig,
    parts: TrainingParts,
    *,
    backup: Backup | None,
    config_yaml: str,
    workspace: Workspace,
    device: torch.device,
    world: World,
    sharded: bool,
    progress: ProgressCallback,
    command: str,
) -> Session:
    """Build optimizer, schedule, precision, EMA, noise generator and cadences; restore `backup`.

    A backup's optimizer and scheduler state come back with this config's optimisation settings
    over them (see `resume.reapply_settings`). `sharded`: shard the fully trained components first.
    """
    import torch

    training = config.training
    total_steps, epochs = run_length(parts.batches_in_epoch, config)
    sharded_modules = _shard(parts, world) if sharded else []
    groups = resolve_parameter_groups(parts.setup.parameter_groups(), training)
    trained = [param for group in groups for param in group["params"]]
    broadcast_parameters(world, trained)
    warmup_steps = resolve_warmup_steps(training.warmup, total_steps)
    optimizer_groups, masters = offload_to_cpu(groups, device) if training.optimizer_offload else (groups, None)
    optimizer_device = torch.device("cpu") if masters is not None else device
    optimizer = build_optimizer(optimizer_groups, training, optimizer_device, warmup_steps=warmup_steps)
    scheduler = build_lr_scheduler(optimizer, training, total_steps)
    ema = None
    if training.ema.enabled:
        ema_device = torch.device("cpu") if training.ema.device is EmaDevice.CPU else None  # None: beside each weight
        ema = ModelEma(
            trained,
            decay=training.ema.decay,
            update_every=training.ema.update_every,
            warmup=training.ema.warmup,
            device=ema_device,
        )
    generator = torch.Generator(device=device)
    generator.manual_seed(rank_seed(training.seed, world.rank))
    first_epoch_steps = optimizer_steps(parts.batches_in_epoch(0), training.gradient_accumulation_steps)
    clocks = {
        "validate": CadenceClock(config.logging.validate_every, first_epoch_steps),
        "sample": CadenceClock(config.sampling.every, first_epoch_steps),
        "save": CadenceClock(config.saving.every, first_epoch_steps),
        "backup": CadenceClock(config.saving.backup_every, first_epoch_steps),
    }
    run = RunState(
        counters=Counters(),
        optimizer=optimizer,
        scheduler=scheduler,
        precision=MixedPrecision(training.precision, device),
        generator=generator,
        ema=ema,
        smoothed_loss=SmoothedValue(),
        clocks=clocks,
    )
    if backup is not None:
        settings = optimizer_settings(optimizer)
        run.load_state_dict(_restored_state(backup, parts, run), rank=world.rank)
        reapply_settings(run.optimizer, run.scheduler, settings)
        progress({"event": "status", "message": f"resuming from {backup.path} (step {backup.step})"})
        if run.noise_reseeded:
            message = (
                f"this backup was trained on another kind of device than {device.type}: the noise draws start anew "
                "from the seed and step, so the run continues, but not as it would have on that device"
            )
            progress({"event": "warning", "message": message})
        if backup.state.get("data", parts.data.fingerprint()) != parts.data.fingerprint():
            progress({"event": "warning", "message": _continue_on_changed_data(run.counters, parts.batches_in_epoch)})
        changed = last_bits_changes(config, backup.config_yaml, backup.state.get("compute", {}), device)
        if changed:
            progress({"event": "warning", "message": changed})
    step = build_step(
        training,
        run.optimizer,
        run.scheduler,
        run.precision,
        trained,
        masters=masters,
        average=functools.partial(average_gradients, world) if world.distributed else None,
        clip=_sharded_clip(world) if sharded else clip_gradients,
    )
    lag = resolve_lag(training.read_back_lag, device, skips_on_device=step.skips_on_device)
    is_main = world.is_main
    metrics = MetricsLog(workspace.metrics)
    if is_main and backup is not None:
        metrics.truncate_after(run.counters.step)
    session = Session(
        config=config,
        config_yaml=config_yaml,
        parts=parts,
        run=run,
        workspace=workspace,
        device=device,
        total_steps=total_steps,
        epochs=epochs,
        world=world,
        tensorboard=TensorBoardLog(
            workspace.tensorboard,
            enabled=is_main and config.logging.tensorboard,
            purge_step=run.counters.step + 1 if backup is not None else None,
        ),
        metrics=metrics,
        progress=progress,
        trained=trained,
        step=step,
        command=command,
        results=StepResults(
            device,
            lag,
            tolerates_overflow=run.precision.skips_overflow,
            check=lambda record: check_step(session, record),
            world=world,
        ),
        flops=_step_flops(parts, run, trained, device, progress, sharded=bool(sharded_modules)),
        last_backup_step=backup.step if backup is not None else None,
        last_backup_path=backup.path if backup is not None else None,
        sharded=sharded_modules,
    )
    return session


def _shard(parts: TrainingParts, world: World) -> list[torch.nn.Module]:
    from onetrainer.trainer.sharding import shard_setup

    return shard_setup(parts.setup, world)


def _sharded_clip(world: World) -> Callable[..., torch.Tensor]:
    from onetrainer.trainer.sharding import clip_sharded_gradients

    return functools.partial(clip_sharded_gradients, world)


def _restored_state(backup: Backup, parts: TrainingParts, run: RunState) -> dict[str, Any]:
    """Load the backup's trained weights into the setup; returns the run state to restore."""
    if not backup.sharded:
        parts.setup.load_trainable_state_dict(backup.weights)
        return backup.state
    from onetrainer.trainer.sharding import load_sharded_backup

    return load_sharded_backup(backup.path, parts.setup, run.optimizer, run.ema, backup.state)


def _step_flops(
    parts: TrainingParts,
    run: RunState,
    trained: list[Any],
    device: torch.device,
    progress: ProgressCallback,
    *,
    sharded: bool,
) -> StepFlops:
    """Counts each batch shape's FLOPs once, with the model's checkpointing off (see `flops`); on an accelerator.

    Each rank counts its own micro-batches on its own (unwrapped) modules: data parallel training wraps
    nothing, and the count makes no collective call. A sharded model is not counted: its forward pass
    gathers each block's weights from the other ranks, which a count on fake tensors cannot do.
    """
    import torch

    def warn(message: str) -> None:
        progress({"event": "warning", "message": message})

    if not counted_on(device):
        return StepFlops.off()
    if sharded:
        return StepFlops.unavailable("a model sharded over the ranks (FSDP) has no FLOP count", warn=warn)
    model = parts.model
    candidates = [model] if isinstance(model, torch.nn.Module) else list(getattr(model, "components", {}).values())
    modules = [module for module in candidates if isinstance(module, torch.nn.Module)]
    one_pass = step_pass(parts.setup, run.generator, run.precision.autocast, trained)
    return StepFlops(
        count=lambda batch: count_flops(lambda: one_pass(batch), modules=modules),
        peak=device_peak(device, run.precision.precision),
        warn=warn,
    )
