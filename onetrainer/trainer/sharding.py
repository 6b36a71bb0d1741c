"""Sharded full fine-tuning (FSDP2): each rank holds 1/N of the trained weights, gradients and optimizer state.

A full fine-tune keeps, per trained parameter, its float32 weight, gradient and two Adam moments: 16
bytes, about 190 GB for a 12-billion-parameter transformer, which no single GPU holds. With
`training.distributed: fsdp`, torch's `fully_shard` splits each fully trained component across the
ranks: every block of it (each element of its top-level module lists: UNet down/up blocks, transformer
blocks, text encoder layers) is gathered just before it runs and freed after, and gradients are
reduce-scattered as backward produces them, so each rank keeps only its shard. The component stays the
same module object, so family hooks call it as before; its parameters become `DTensor`s.

What changes around it, all here:
- the gradient norm for clipping sums the shards' squares over the ranks (`clip_sharded_gradients`);
- backups go through `torch.distributed.checkpoint`: each rank writes its shards of the weights, the
  optimizer state and the moving average, so no rank ever holds the whole model (`write_sharded_backup`,
  `load_sharded_backup`);
- saving the output gathers the full weights on rank 0's CPU, one tensor at a time, and writes the
  usual single file or diffusers folder from there (`gathered`).

Accumulation micro-steps still reduce-scatter their gradients: skipping that (FSDP's
`set_requires_gradient_sync(False)`) would keep a full, unsharded gradient on every rank, which is what
sharding is there to avoid.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from onetrainer.trainer.backup import SHARDS_FOLDER, backup_name, write_backup_files
from onetrainer.trainer.distributed import World, all_reduce_sum, broadcast_object
from onetrainer.util.atomic import atomic_directory
from onetrainer.util.config.memory import fully_trained as fully_trained_parts
from onetrainer.util.config.optimizer_args import SHARDABLE
from onetrainer.util.config.training import DistributedMode, EmaDevice, Precision
from onetrainer.util.enums import TrainingMethod
from onetrainer.util.errors import RuntimeFailure, UserError

if TYPE_CHECKING:
    import torch

    from onetrainer.trainer.ema import ModelEma
    from onetrainer.trainer.parts import LoopSetup
    from onetrainer.util.config.schema import TrainConfig


def uses_sharding(config: TrainConfig, world: World) -> bool:
    """Whether this run shards (FSDP); refuses the settings sharding does not support, before anything loads."""
    training = config.training
    if training.distributed is not DistributedMode.FSDP or not world.distributed:
        return False
    where = "training.distributed"
    if config.method is not TrainingMethod.FULL:
        raise UserError(
            f"training.distributed=fsdp shards a full fine-tune; a {config.method.value} run trains few enough "
            "numbers for every GPU to hold them all",
            where=where,
            hint="Use training.distributed=ddp (the default) for LoRA and embedding runs.",
        )
    if training.precision is Precision.FP16:
        raise UserError(
            "fp16 autocast needs a gradient scaler that sees every gradient, and a sharded run has none that does",
            where="training.precision",
            hint="Use training.precision=bf16 (or fp32) with training.distributed=fsdp.",
        )
    if training.ema.enabled and training.ema.device is EmaDevice.CPU:
        raise UserError(
            "a sharded run keeps each rank's share of the moving average beside its shard of the weights",
            where="training.ema.device",
            hint="Set training.ema.device=train with training.distributed=fsdp.",
        )
    if training.optimizer not in SHARDABLE:
        raise UserError(
            f"the {training.optimizer.value} optimizer cannot step the sharded weights (it fails at the first step)",
            where="training.optimizer",
            hint=f"Use one of {', '.join(optimizer.value for optimizer in SHARDABLE)} with training.distributed=fsdp.",
        )
    _refuse_memory_levers(config)
    return True


def _refuse_memory_levers(config: TrainConfig) -> None:
    """The memory levers that step or move trained tensors themselves, which are FSDP's `DTensor` shards here.

    Sharding already divides the trained weights, gradients and optimizer state by the number of ranks;
    the frozen parts' weight dtypes (fp8, int8, nf4) still apply, as those parts are not sharded.
    """
    training = config.training
    hint = "Leave it off with training.distributed=fsdp: each rank already holds 1/N of the weights and state."
    if training.stochastic_rounding:
        raise UserError(
            "stochastic rounding updates each bf16 weight through an fp32 copy of it, which a sharded weight "
            "cannot be replaced by",
            where="training.stochastic_rounding",
            hint="Keep the trained parts' weights in fp32 with training.distributed=fsdp (no weight_dtype: bf16).",
        )
    if training.optimizer_offload:
        raise UserError(
            "optimizer_offload keeps CPU copies of the trained tensors, and a sharded run's are shards that "
            "FSDP places itself",
            where="training.optimizer_offload",
            hint=hint,
        )
    for name in fully_trained_parts(config):
        if config.parts[name].offload_blocks:
            raise UserError(
                f"layer offloading moves the blocks of the {name}, which FSDP shards and gathers itself",
                where=f"parts.{name}.offload_blocks",
                hint=hint,
            )


def shard_units(module: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """The blocks FSDP gathers one at a time: the elements of the module lists nearest the top."""
    import torch

    for child in module.children():
        if isinstance(child, torch.nn.ModuleList):
            yield from (block for block in child if any(True for _ in block.parameters()))
        else:
            yield from shard_units(child)


def shard_setup(setup: LoopSetup, world: World) -> list[torch.nn.Module]:
    """Shard every fully trained component of `setup` across the ranks; returns those components."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    from onetrainer.trainer.parts import ShardableSetup

    if not isinstance(setup, ShardableSetup):
        raise UserError(
            f"this model's training setup ({type(setup).__name__}) cannot be sharded",
            where="training.distributed",
            hint="Use training.distributed=ddp.",
        )
    device = world.device
    mesh = init_device_mesh(device.type if device is not None else "cpu", (world.size,))

    def shard(module: torch.nn.Module) -> None:
        for unit in list(shard_units(module)):
            fully_shard(unit, mesh=mesh)
        fully_shard(module, mesh=mesh)

    return setup.shard(shard)


def reshard(modules: Sequence[torch.nn.Module]) -> None:
    """Free the gathered weights of every sharded block of `modules`.

    After a forward pass with no backward (previews, validation) FSDP leaves the outermost module's
    weights gathered, as it expects the backward pass next; the next forward pass would then use those
    copies, not the shards, even where the shards have changed since (the moving average swapped out,
    a backup loaded).
    """
    from torch.distributed.fsdp import FSDPModule

    for module in modules:
        for block in module.modules():
            if isinstance(block, FSDPModule):
                block.reshard()


def local_tensors(tensors: Iterable[torch.Tensor]) -> list[torch.Tensor]:
    """This rank's part of each tensor: its shard of a sharded one, a plain one as it is."""
    from torch.distributed.tensor import DTensor

    return [tensor.to_local() if isinstance(tensor, DTensor) else tensor for tensor in tensors]


def clip_sharded_gradients(world: World, parameters: Sequence[torch.Tensor], max_norm: float | None) -> torch.Tensor:
    """The total gradient norm over all ranks' shards (and the replicated tensors once), clipped to `max_norm`."""
    import torch
    from torch.distributed.tensor import DTensor

    grads = [param.grad for param in parameters if param.grad is not None]
    shards = [grad.to_local() for grad in grads if isinstance(grad, DTensor)]
    replicated = [grad for grad in grads if not isinstance(grad, DTensor)]
    device = (shards or replicated)[0].device

    def squares(tensors: list[torch.Tensor]) -> torch.Tensor:
        if not tensors:
            return torch.zeros((), device=device)
        return torch.stack([torch.linalg.vector_norm(tensor.float()) for tensor in tensors]).square().sum()

    total = (all_reduce_sum(world, squares(shards)) + squares(replicated)).sqrt()
    if max_norm is not None:
        scale = torch.clamp(max_norm / (total + 1e-6), max=1.0)
        torch._foreach_mul_(shards + replicated, scale)
    return total


def initialise_optimizer_state(optimizer: torch.optim.Optimizer) -> None:
    """Give the optimizer its state tensors, as a first step does, without moving the weights.

    `torch.distributed.checkpoint` loads into existing tensors, and an optimizer creates its state
    lazily: one step with zero gradients at learning rate 0 creates it (torch's own checkpoint helpers
    do the same). The values it leaves are replaced by the load.
    """
    import torch

    if optimizer.state:
        return
    rates = [group["lr"] for group in optimizer.param_groups]
    params = [param for group in optimizer.param_groups for param in group["params"]]
    for group in optimizer.param_groups:
        group["lr"] = 0.0
    for param in params:
        param.grad = torch.zeros_like(param)
    optimizer.step()
    for group, rate in zip(optimizer.param_groups, rates, strict=True):
        group["lr"] = rate
    optimizer.zero_grad(set_to_none=True)


def sharded_payload(setup: LoopSetup, optimizer: torch.optim.Optimizer, ema: ModelEma | None) -> dict[str, Any]:
    """What a sharded backup keeps in its checkpoint folder: references to the live tensors, so a load
    fills them in place."""
    payload: dict[str, Any] = {
        "weights": setup.trainable_state_dict(),
        "optimizer": {str(index): state for index, state in optimizer.state_dict()["state"].items()},
    }
    if ema is not None:
        payload["ema"] = {str(index): shadow for index, shadow in enumerate(ema.shadow)}
    return payload


def write_sharded_backup(
    world: World,
    directory: Path,
    *,
    step: int,
    epoch: int,
    payload: dict[str, Any],
    state: dict[str, Any] | None,
    config_yaml: str,
) -> Path:
    """Every rank writes its shards into rank 0's temporary backup folder; rank 0 adds the rest and renames
    it into place (`state` is rank 0's; None on the other ranks)."""
    import torch.distributed.checkpoint as dcp

    target = directory / backup_name(step)
    with contextlib.ExitStack() as stack:
        folder: str | None = None
        if world.is_main:
            try:
                folder = str(stack.enter_context(atomic_directory(target, overwrite=True)))
            finally:
                broadcast_object(world, folder)
        else:
            folder = broadcast_object(world, None)
            if folder is None:
                raise RuntimeFailure(f"rank 0 could not create the backup folder {target}")
        with _checkpoint_errors("the sharded backup could not be written", Path(folder)):
            dcp.save(payload, checkpoint_id=Path(folder) / SHARDS_FOLDER)
        if world.is_main and state is not None:
            write_backup_files(
                Path(folder),
                step=step,
                epoch=epoch,
                state=state,
                config_yaml=config_yaml,
                world_size=world.size,
                sharded=True,
            )
    return target


def load_sharded_backup(
    path: Path, setup: LoopSetup, optimizer: torch.optim.Optimizer, ema: ModelEma | None, state: dict[str, Any]
) -> dict[str, Any]:
    """Load a sharded backup's tensors in place (weights included); returns `state` with the optimizer's
    and the moving average's tensors put back, ready for `RunState.load_state_dict`."""
    import torch.distributed.checkpoint as dcp

    initialise_optimizer_state(optimizer)
    payload = sharded_payload(setup, optimizer, ema)
    check_shard_metadata(path / SHARDS_FOLDER)
    with _checkpoint_errors(f"the sharded backup {path} cannot be loaded", path):
        dcp.load(payload, checkpoint_id=path / SHARDS_FOLDER, planner=_checked_planner())
    restored = dict(state)
    restored["optimizer"] = {
        "state": {int(index): values for index, values in payload["optimizer"].items()},
        "param_groups": state["optimizer"]["param_groups"],
    }
    if ema is not None and state.get("ema") is not None:
        shadow = [payload["ema"][str(index)] for index in range(len(ema.shadow))]
        restored["ema"] = {"shadow": shadow, "updates": state["ema"]["updates"]}
    return restored


@contextlib.contextmanager
def _checkpoint_errors(what: str, where: Path) -> Iterator[None]:
    """torch's checkpoint failures as our errors: they derive from `BaseException` (past every `except
    Exception`) and wrap each rank's error, ours included, in a traceback dump."""
    from torch.distributed.checkpoint.api import CheckpointException

    try:
        yield
    except CheckpointException as error:
        failures = [failure for failure, _ in error.failures.values()]
        ours = next((failure for failure in failures if isinstance(failure, UserError)), None)
        if ours is not None:
            raise ours from None
        reasons = "; ".join(sorted({f"{type(failure).__name__}: {failure}" for failure in failures}))
        raise RuntimeFailure(f"{what}: {reasons}", where=str(where)) from None


def check_shard_metadata(folder: Path) -> None:
    """Refuse shards whose `.metadata` would build anything but checkpoint metadata.

    `dcp.load` unpickles that file with no restriction, so a backup from elsewhere could run code on resume.
    It is read here first by an unpickler that builds only torch's checkpoint metadata classes, dtypes, sizes,
    layouts and paths; what passes builds the same harmless objects when torch reads it again.
    """
    import io
    import pickle

    metadata = folder / ".metadata"

    class MetadataOnly(pickle.Unpickler):
        def find_class(self, module: str, name: str) -> Any:
            if _metadata_global(module, name):
                return super().find_class(module, name)
            raise pickle.UnpicklingError(f"{module}.{name} is not part of checkpoint metadata")

    try:
        MetadataOnly(io.BytesIO(metadata.read_bytes())).load()
    except (OSError, pickle.UnpicklingError, EOFError, AttributeError, ValueError, TypeError) as error:
        raise UserError(
            f"the sharded backup's {metadata} cannot be read as checkpoint metadata ({error}), so it is not loaded",
            where=str(folder.parent),
            hint="Resume from another backup; a backup that did not come from this run may run code when loaded.",
        ) from None


_METADATA_GLOBALS = {
    "torch.distributed.checkpoint.metadata": {
        "Metadata",
        "MetadataIndex",
        "TensorProperties",
        "TensorStorageMetadata",
        "BytesStorageMetadata",
        "ChunkStorageMetadata",
        "StorageMeta",
        "_MEM_FORMAT_ENCODING",
    },
    "torch.distributed.checkpoint.filesystem": {"_StorageInfo"},
    "torch.serialization": {"_get_layout"},
    "pathlib": {"Path", "PosixPath", "WindowsPath"},
    "pathlib._local": {"Path", "PosixPath", "WindowsPath"},  # where Python 3.13 pickles paths
    "collections": {"OrderedDict"},
}
"""The exact classes and functions torch (2.6 to 2.13) pickles into a checkpoint's `.metadata`."""


def _metadata_global(module: str, name: str) -> bool:
    """Whether `module.name` may be built; exact names only (the unpickler also resolves dotted names inside
    a module, `metadata.os.system` among them)."""
    import torch

    if "." in name:
        return False
    if module == "torch":
        return name == "Size" or isinstance(getattr(torch, name, None), torch.dtype)
    return name in _METADATA_GLOBALS.get(module, set())


def _checked_planner() -> Any:
    """torch's load planner, but values stored as bytes (a non-tensor in the optimizer's state) must load with
    `weights_only=True` before torch loads them with `weights_only=False`."""
    import torch
    from torch.distributed.checkpoint import DefaultLoadPlanner

    class CheckedPlanner(DefaultLoadPlanner):
        def load_bytes(self, read_item: Any, value: Any) -> None:
            try:
                torch.load(value, weights_only=True)
            except Exception as error:  # noqa: BLE001 - any failure means the bytes are not plain values
                raise UserError(
                    f"a value in the sharded backup ({read_item.dest_index.fqn}) is not plain data ({error})",
                    hint="Resume from another backup; a backup that did not come from this run may run code.",
                ) from None
            value.seek(0)
            super().load_bytes(read_item, value)

    return CheckedPlanner()


@contextlib.contextmanager
def gathered(world: World, modules: Sequence[torch.nn.Module]) -> Iterator[None]:
    """For the block, rank 0's sharded `modules` show their full weights, on the CPU, as plain modules.

    Every rank takes part in gathering the weights (one tensor at a time); rank 0 keeps them. Its
    modules then report their own class (not FSDP's subclass, which a diffusers folder would name) and
    return the full weights from `state_dict()`, which is all a saver reads.
    """
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    weights = [get_model_state_dict(module, options=options) for module in modules]
    with contextlib.ExitStack() as stack:
        if world.is_main:
            for module, full in zip(modules, weights, strict=True):
                stack.enter_context(_plain_view(module, full))
        yield


@contextlib.contextmanager
def _plain_view(module: torch.nn.Module, weights: dict[str, Any]) -> Iterator[None]:
    import torch
    from torch.distributed.fsdp import FSDPModule

    sharded_class = type(module)
    plain_class: type[torch.nn.Module] = next(
        cls for cls in sharded_class.__mro__[1:] if issubclass(cls, torch.nn.Module) and not issubclass(cls, FSDPModule)
    )

    def full_weights(_: Any, state_dict: dict[str, Any], prefix: str, local_metadata: Any) -> None:
        for key in list(state_dict):
            name = key[len(prefix) :]
            if name in weights:
                state_dict[key] = weights[name]

    handle = module.register_state_dict_post_hook(full_weights)
    module.__class__ = plain_class
    try:
        yield
    finally:
        module.__class__ = sharded_class
        handle.remove()
