"""Several processes training one model: torch.distributed, joined from torchrun's environment here only.

`torchrun --nproc_per_node N -m onetrainer train CONFIG` (or `onetrainer train CONFIG --gpus N`, which
starts torchrun) runs N copies of the trainer, one per GPU; each is a *rank*. `join_world` reads
torchrun's variables (RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR/PORT) and creates the process group:
NCCL between GPUs, each rank on `cuda:LOCAL_RANK`; gloo between CPU processes (what the tests use).

Data parallel: every rank holds the trained tensors, trains on its own slice of each global batch (the
data plan is sharded so all ranks train the same bucket at each step) and, once per optimizer step,
`average_gradients` makes every gradient the mean over ranks, so all ranks take the same update. That
is what DDP does, done on the trained tensors themselves rather than by wrapping a module: they live in
several modules called from family hooks (the denoiser, text encoders, embedding vectors that belong to
no module), and a wrapper would have to be called in their place. Accumulation micro-steps never
synchronise (DDP's `no_sync`): the gradient they add up is averaged once, before clipping.

Everything here is a no-op in a single process, so the loop reads the same either way. Ranks must agree
on every decision that leads to a collective call (stop, fail, back up), otherwise one waits forever for
the others: `any_rank` shares a flag, `together` shares the outcome of work only rank 0 does, and
`leaders_first` runs a block on rank 0 before the others (the data scan and the cache).

Two process groups: the default one (NCCL on GPUs) carries the tensors of every step (gradients, the
loss read-back, FSDP's traffic); a gloo group with a long timeout (`HOST_TIMEOUT`) carries the
agreements and small objects, because there a rank may wait for hours, while rank 0 fills the cache
or writes a large model, longer than NCCL's 10 minutes before it declares a collective hung.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from onetrainer.util.errors import RuntimeFailure, UserError

if TYPE_CHECKING:
    import torch

LAUNCH_COMMAND_ENV = "ONETRAINER_LAUNCH_COMMAND"
"""Set by `onetrainer train --gpus N` for its ranks: the command line the user typed, for messages that say
how to continue a run."""

HOST_TIMEOUT = timedelta(hours=24)
"""How long a rank waits for the others in an agreement (see the module docstring)."""

BUCKET_BYTES = 64 * 1024**2
"""Gradients are averaged in flat buckets of about this size: one collective call per bucket instead of
one per tensor (LoRA factors are thousands of small tensors), without a second copy of every gradient."""


@dataclass
class World:
    """This process's place among the ranks; `World()` is a single process."""

    rank: int = 0
    local_rank: int = 0
    """The rank among the processes of this machine (which GPU it uses)."""
    size: int = 1
    device: torch.device | None = None
    """This rank's training device."""
    owns_group: bool = False
    """Whether `join_world` created the process group (and `leave_world` destroys it)."""
    host_group: Any = None
    """The gloo group of the agreements (see the module docstring); None: the default group."""
    shared_failure: bool = field(default=False, compare=False)
    """Set when every rank has learnt of the failure being raised (see `together`), so that all of them
    can still take part in the emergency backup."""

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    @property
    def failure_is_shared(self) -> bool:
        """Whether an error raised now is raised on every rank (always so in a single process)."""
        return not self.distributed or self.shared_failure


def launched_rank() -> int:
    """The rank torchrun gave this process (0 when it did not start it), before any process group exists."""
    return int(os.environ.get("RANK", "0") or 0)


def _launched_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def rank_device(setting: str, local_rank: int, size: int) -> torch.device:
    """The device of one rank: `cuda:LOCAL_RANK` for CUDA; an explicit `cuda:N` only in a single process."""
    import torch

    from onetrainer.trainer.device import resolve_device

    if size == 1:
        return resolve_device(setting)
    if setting.startswith("cuda:"):
        raise UserError(
            f"training.device={setting} names one GPU, but {size} processes train together and each "
            "uses its own GPU (cuda:LOCAL_RANK)",
            where="training.device",
            hint="Set training.device to cuda or auto; choose the GPUs with CUDA_VISIBLE_DEVICES.",
        )
    if setting == "mps":
        raise UserError("Apple MPS trains in one process only", where="training.device")
    if setting == "cpu" or (setting == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise UserError("training.device asks for CUDA, but no CUDA GPU is available", hint="Use training.device=cpu.")
    if local_rank >= torch.cuda.device_count():
        raise UserError(
            f"this machine runs more training processes than it has GPUs ({torch.cuda.device_count()})",
            hint="Start at most one process per GPU (torchrun --nproc_per_node, onetrainer train --gpus).",
        )
    return torch.device("cuda", local_rank)


def _make_current(device: torch.device) -> None:
    """Make a GPU the process's current one: torch's current stream, and streams, events and allocations made
    without naming a device, follow it. With `training.device=cuda:1` they must be on that GPU, not cuda:0
    (an event recorded on cuda:0's stream would not wait for cuda:1's copies)."""
    import torch

    if device.type == "cuda" and device.index is not None:  # plain "cuda" is the current one already
        torch.cuda.set_device(device)


_joined: list[World] = []
"""The world `join_world` set up in this process, for code that has no `World` at hand (`current_world`)."""


def join_world(setting: str) -> tuple[World, torch.device]:
    """This process's world and training device; creates the process group when torchrun started several.

    A process group that already exists (a caller set one up) is used as it is.
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        world = _existing_world()
        device = world.device = rank_device(setting, world.local_rank, world.size)
    else:
        size = _launched_size()
        local_rank = int(os.environ.get("LOCAL_RANK", "0") or 0)
        device = rank_device(setting, local_rank, size)
        if size == 1:
            _make_current(device)
            return World(device=device), device
        if device.type == "cuda":
            import torch

            torch.cuda.set_device(device)
            dist.init_process_group("nccl", device_id=device)
        else:
            dist.init_process_group("gloo")
        world = World(dist.get_rank(), local_rank, dist.get_world_size(), device, owns_group=True)
    world.host_group = dist.new_group(backend="gloo", timeout=HOST_TIMEOUT)
    _joined[:] = [world]
    return world, device


def _existing_world() -> World:
    import torch.distributed as dist

    return World(dist.get_rank(), int(os.environ.get("LOCAL_RANK", "0") or 0), dist.get_world_size())


def current_world() -> World:
    """The world `join_world` joined, else that of an existing process group, else a single process."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return World()
    return _joined[0] if _joined else _existing_world()


def leave_world(world: World) -> None:
    """Destroy the process groups `join_world` created, once the run is over on every rank."""
    if not world.distributed:
        return
    import torch.distributed as dist

    _joined.clear()
    if world.owns_group:
        dist.destroy_process_group()
        world.owns_group = False
    elif world.host_group is not None:
        dist.destroy_process_group(world.host_group)
    world.host_group = None


def rank_seed(seed: int, rank: int) -> int:
    """Rank 0 uses the run's seed (so one process trains exactly as before); every other rank its own."""
    if rank == 0:
        return seed
    from onetrainer.data_loader.rng import keyed_seed

    return keyed_seed(seed, "rank", rank) % 2**63


def all_reduce_sum(world: World, tensor: torch.Tensor) -> torch.Tensor:
    """Sum a device `tensor` over ranks, in place, on the default group; returned for chaining."""
    if world.distributed:
        import torch.distributed as dist

        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def sum_over_ranks(world: World, *values: float) -> list[float]:
    """The sums of a few host numbers over ranks (one call on the agreement group)."""
    if not world.distributed:
        return list(values)
    import torch
    import torch.distributed as dist

    tensor = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM, group=world.host_group)
    return [float(value) for value in tensor.tolist()]


def any_rank(world: World, flag: bool) -> bool:
    """Whether `flag` is true on any rank; every rank gets the same answer."""
    if not world.distributed:
        return flag
    return sum_over_ranks(world, float(flag))[0] > 0


def all_ranks(world: World, flag: bool) -> bool:
    """Whether `flag` is true on every rank; every rank gets the same answer."""
    return not any_rank(world, not flag)


def broadcast_object(world: World, value: Any) -> Any:
    """Rank 0's `value` on every rank (small, picklable values only)."""
    if not world.distributed:
        return value
    import torch.distributed as dist

    box = [value]
    dist.broadcast_object_list(box, src=0, group=world.host_group)
    return box[0]


def gather_objects(world: World, value: Any) -> list[Any] | None:
    """Every rank's `value`, by rank, on rank 0 (None on the others); small, picklable values only."""
    if not world.distributed:
        return [value]
    import torch.distributed as dist

    gathered: list[Any] | None = [None] * world.size if world.is_main else None
    dist.gather_object(value, gathered, dst=0, group=world.host_group)
    return gathered


def differing(world: World, value: Any) -> list[Any] | None:
    """Every rank's `value`, by rank, when they are not all equal; None when they are (or in one process).

    The same answer on every rank, so that all of them refuse together (small, picklable values only).
    """
    gathered = gather_objects(world, value)
    verdict = gathered if gathered is not None and any(item != gathered[0] for item in gathered) else None
    return broadcast_object(world, verdict)


def _is_sharded(tensor: torch.Tensor) -> bool:
    from torch.distributed.tensor import DTensor

    return isinstance(tensor, DTensor)


def broadcast_parameters(world: World, parameters: Sequence[torch.Tensor]) -> None:
    """Rank 0's values of `parameters` on every rank (sharded ones are left to FSDP).

    Like DDP at construction: the ranks start from the same weights even where an initialisation drew
    from the global random streams, which are seeded per rank.
    """
    if not world.distributed:
        return
    import torch
    import torch.distributed as dist

    with torch.no_grad():
        for parameter in parameters:
            if not _is_sharded(parameter):
                dist.broadcast(parameter.data, src=0, group=_group_for(world, parameter))


def average_gradients(world: World, parameters: Sequence[torch.Tensor]) -> None:
    """Make the gradient of each trained tensor the mean over ranks: DDP's all-reduce, once per step.

    Gradients are flattened into buckets of about `BUCKET_BYTES` per device and dtype, all-reduced
    asynchronously (the next bucket is packed while one travels) and copied back. Sharded tensors (FSDP)
    are skipped: FSDP reduces their gradients itself, during backward.

    A trained tensor that got no gradient on any rank (a layer past the text encoder's `layer_skip`) keeps
    none, as in a single process, where the optimizer then leaves it alone: a zero gradient would let
    AdamW decay it and give it state. One that got a gradient on some ranks only counts as zeros on the
    others, so that every rank sends the same layout (`_graded_anywhere`).
    """
    if not world.distributed:
        return
    import torch
    import torch.distributed as dist

    averaged = [parameter for parameter in parameters if parameter.requires_grad and not _is_sharded(parameter)]
    grads: dict[tuple[torch.device, torch.dtype], list[torch.Tensor]] = {}
    for parameter, graded in zip(averaged, _graded_anywhere(world, averaged), strict=True):
        if not graded:
            continue
        if parameter.grad is None:
            parameter.grad = torch.zeros_like(parameter)
        grads.setdefault((parameter.grad.device, parameter.grad.dtype), []).append(parameter.grad)
    pending: list[tuple[Any, torch.Tensor, list[torch.Tensor]]] = []
    for group in grads.values():
        for bucket in _buckets(group):
            flat = torch.cat([grad.reshape(-1) for grad in bucket])
            work = dist.all_reduce(flat, op=dist.ReduceOp.SUM, async_op=True, group=_group_for(world, flat))
            pending.append((work, flat, bucket))
    with torch.no_grad():
        for work, flat, bucket in pending:
            work.wait()
            flat.div_(world.size)
            for grad, values in zip(bucket, flat.split([grad.numel() for grad in bucket]), strict=True):
                grad.copy_(values.view_as(grad))


def _graded_anywhere(world: World, parameters: Sequence[torch.Tensor]) -> list[bool]:
    """For each of `parameters`, whether it has a gradient on any rank; the same answer on every rank.

    Whether a tensor has a gradient is known on the host, so the mask travels as a host tensor through
    the agreement group: one small collective per step that never waits for the device (a mask summed
    on the device would have to be read back, a host sync in every step).
    """
    import torch
    import torch.distributed as dist

    mask = torch.tensor([parameter.grad is not None for parameter in parameters], dtype=torch.uint8)
    dist.all_reduce(mask, op=dist.ReduceOp.MAX, group=world.host_group)
    return [bool(flag) for flag in mask.tolist()]


def _group_for(world: World, tensor: torch.Tensor) -> Any:
    """The process group that carries `tensor`: NCCL (the default group on GPUs) takes CUDA tensors only, so
    the weights and gradients of offloaded blocks in CPU memory travel through the host's gloo group."""
    return world.host_group if tensor.device.type == "cpu" else None


def _buckets(grads: list[torch.Tensor]) -> Iterator[list[torch.Tensor]]:
    bucket: list[torch.Tensor] = []
    size = 0
    for grad in grads:
        bucket.append(grad)
        size += grad.numel() * grad.element_size()
        if size >= BUCKET_BYTES:
            yield bucket
            bucket, size = [], 0
    if bucket:
        yield bucket


@contextlib.contextmanager
def together(world: World, what: str) -> Iterator[None]:
    """Run the block on every rank (often real work on rank 0 only); if it fails on any rank, every rank raises.

    The failing rank raises its own error, the others a `RuntimeFailure` that points to it; all of them
    then stop at the same point, which lets them write the emergency backup together.
    """
    failure: Exception | None = None
    try:
        yield
    except Exception as error:
        if not world.distributed:
            raise
        failure = error
    if any_rank(world, failure is not None):
        world.shared_failure = True
        if failure is not None:
            raise failure
        raise RuntimeFailure(f"another rank failed while {what}; its error is in that rank's output")


@contextlib.contextmanager
def leaders_first(world: World, what: str) -> Iterator[None]:
    """Run the block on rank 0 first, then on the first rank of every other machine, then on the rest.

    For work whose result the next ranks find on disk: the data scan (its file records) and the cache.
    Rank 0 does it; on a shared filesystem every other rank only finds it done, and on machine-local
    disks the first rank of each machine does it once for its machine. A failure in any turn stops
    every rank there.
    """
    turn = 0 if world.rank == 0 else 1 if world.local_rank == 0 else 2
    failure: Exception | None = None
    for phase in range(3):
        if phase == turn:
            try:
                yield
            except Exception as error:
                if not world.distributed:
                    raise
                failure = error
        if any_rank(world, failure is not None):
            world.shared_failure = True
            if failure is not None:
                raise failure
            raise RuntimeFailure(f"another rank failed while {what}; its error is in that rank's output")


def run_command(default: str) -> str:
    """The command line that started this run, for messages that say how to continue it.

    Under `onetrainer train --gpus N` it is what the user typed; under a torchrun the user started
    themselves, the torchrun line of a single machine (several machines: the user knows their own).
    """
    launched = os.environ.get(LAUNCH_COMMAND_ENV)
    if launched:
        return launched
    size = _launched_size()
    if size == 1:
        return default
    local = int(os.environ.get("LOCAL_WORLD_SIZE", str(size)) or size)
    program = default.removeprefix("onetrainer ")
    if local == size:
        return f"torchrun --nproc_per_node {size} -m onetrainer {program}"
    return f"torchrun <your options, on every machine> -m onetrainer {program}"


def describe(world: World, device: torch.device, *, batch_size: int, accumulation: int) -> str:
    """The start-up line of a run on several ranks: how many, and the effective batch one optimizer step
    averages over (the learning rate is not scaled for it; see the README)."""
    import torch.distributed as dist

    effective = world.size * batch_size * accumulation
    return (
        f"{world.size} processes ({dist.get_backend()}, this one on {device}): effective batch {effective} = "
        f"{world.size} processes × batch {batch_size} × accumulation {accumulation}"
    )
