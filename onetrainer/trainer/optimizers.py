"""Build the optimizer a run asks for, from the setup's parameter groups and the `training` section.

Optimizers that live in optional packages are imported only when chosen, and a missing package is a
user error that names the install command. Extra keyword arguments (`training.optimizer_args`) are
checked against the optimizer's signature by the config check (`util.config.optimizer_args`), so a
misspelled knob fails before anything loads instead of being ignored; here once more, for a config
made in code.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from onetrainer.util.config.optimizer_args import OPTIMIZER_CLASSES, argument_problems, import_optimizer_class
from onetrainer.util.config.training import FUSED_ON_CUDA, Optimizer, TrainingConfig
from onetrainer.util.errors import UserError
from onetrainer.util.quiet import quiet_import

if TYPE_CHECKING:
    import torch

_BETAS_LENGTH = {Optimizer.CAME: 3}


def _optimizer_class(optimizer: Optimizer) -> type:
    """The class `optimizer` names; a user error naming the install command when its package is missing."""
    try:
        return import_optimizer_class(optimizer)
    except ImportError:
        spec = OPTIMIZER_CLASSES[optimizer]
        if spec.package is None:
            raise
        raise UserError(
            f"the {optimizer.value} optimizer needs the `{spec.package}` package, which is not installed",
            where="training.optimizer",
            hint=spec.hint,
        ) from None


def resolve_parameter_groups(groups: list[dict[str, Any]], config: TrainingConfig) -> list[dict[str, Any]]:
    """Name every group, drop those with nothing to train, and give each its learning rate (the group's own,
    from `parts.<name>.learning_rate`, else `training.learning_rate`)."""
    resolved = []
    for index, group in enumerate(groups):
        params = [param for param in group["params"] if param.requires_grad]
        if not params:
            continue
        lr = float(group.get("lr") or config.learning_rate)
        resolved.append({**group, "params": params, "lr": lr, "name": str(group.get("name", f"group{index}"))})
    if not resolved:
        raise UserError(
            "nothing to train: the model setup returned no trainable parameters",
            hint="Check `method` and the adapter settings (lora / embedding).",
        )
    return resolved


def _keyword_arguments(config: TrainingConfig, warmup_steps: int) -> dict[str, Any]:
    """The constructor arguments our config expresses for `config.optimizer`, before `optimizer_args`."""
    optimizer = config.optimizer
    kwargs: dict[str, Any] = {"lr": config.learning_rate, "weight_decay": config.weight_decay}
    if config.betas is not None:
        expected = _BETAS_LENGTH.get(optimizer, 2)
        if optimizer in (Optimizer.SGD, Optimizer.ADAFACTOR):
            raise UserError(
                f"the {optimizer.value} optimizer takes no betas", where="training.betas", hint="Set it to null."
            )
        if len(config.betas) != expected:
            raise UserError(
                f"the {optimizer.value} optimizer takes {expected} betas, got {len(config.betas)}",
                where="training.betas",
            )
        kwargs["betas"] = tuple(config.betas)
    if config.eps is not None:
        if optimizer in (Optimizer.ADAFACTOR, Optimizer.CAME, Optimizer.SGD, Optimizer.LION):
            raise UserError(
                f"the {optimizer.value} optimizer has no single epsilon",
                where="training.eps",
                hint="Set it to null; optimizers with a pair of epsilons take it in optimizer_args.eps.",
            )
        kwargs["eps"] = config.eps
    if optimizer is Optimizer.SGD:
        kwargs["momentum"] = config.momentum
    if optimizer is Optimizer.ADAFACTOR:
        kwargs.update(scale_parameter=False, relative_step=False, warmup_init=False)
    if optimizer is Optimizer.SCHEDULE_FREE_ADAMW:
        kwargs["warmup_steps"] = warmup_steps
    return kwargs


def _check_arguments(cls: type, config: TrainingConfig, kwargs: dict[str, Any]) -> None:
    """Refuse a setting the optimizer lacks. The config check refuses `optimizer_args` the same way before
    anything loads; this holds for a `TrainingConfig` made in code, which no config check has read."""
    accepted = inspect.signature(cls).parameters
    for name in list(kwargs):
        if name not in accepted and name in ("weight_decay", "eps", "momentum"):
            raise UserError(f"the {config.optimizer.value} optimizer has no `{name}` setting", where=f"training.{name}")
    problems = argument_problems(config.optimizer, cls, config.optimizer_args)
    if problems:
        raise UserError(f"{problems[0].message} (given: {problems[0].value!r})", where=problems[0].path)


def build_optimizer(
    groups: list[dict[str, Any]], config: TrainingConfig, device: torch.device, *, warmup_steps: int = 0
) -> torch.optim.Optimizer:
    """The optimizer over `groups` (already resolved), configured from `config`.

    `warmup_steps` goes to schedule-free AdamW, which warms up internally instead of through a
    learning-rate scheduler.
    """
    if config.optimizer is Optimizer.ADAMW_8BIT and device.type != "cuda":
        raise UserError(
            "AdamW 8-bit (bitsandbytes) needs a CUDA GPU; this run trains on the CPU",
            where="training.optimizer",
            hint="Use `training.optimizer=adamw8bit_ao` (torchao's 8-bit AdamW, which runs anywhere) or adamw.",
        )
    cls = _optimizer_class(config.optimizer)
    kwargs = _keyword_arguments(config, warmup_steps)
    _check_arguments(cls, config, kwargs)
    kwargs.update(
        {name: tuple(value) if isinstance(value, list) else value for name, value in config.optimizer_args.items()}
    )
    _choose_fused(config, kwargs, groups, device)
    try:
        optimizer: torch.optim.Optimizer = cls(groups, **kwargs)
    except (TypeError, ValueError) as error:
        raise UserError(
            f"the {config.optimizer.value} optimizer rejected its settings: {error}", where="training"
        ) from None
    if config.stochastic_rounding:
        from onetrainer.trainer.updates import keep_state_dtypes

        keep_state_dtypes(optimizer)
    if any(param.device.type == "cpu" for group in groups for param in group["params"]):
        _count_updates_as_changes(optimizer)
    return optimizer


def _count_updates_as_changes(optimizer: torch.optim.Optimizer) -> None:
    """After each step, mark the stepped tensors changed for autograd (`increment_version`).

    An offloaded block's copy taken ahead of its use is stale once the optimizer has updated the weights
    in CPU memory it was copied from, which `model_setup.offload` tells by their version counters. Some
    optimizers change a tensor without the counter seeing it: bitsandbytes' custom kernels, and Prodigy's
    and CAME's updates of `param.data` (a tensor with a counter of its own). The step would then run on the
    copy of the weights before the update. Only where some trained tensor is in CPU memory (the bump is a
    host call per tensor; the parameter groups are narrowed to the one tensor a per-tensor update steps).
    """
    from torch.autograd.graph import increment_version

    def changed(stepped: torch.optim.Optimizer, *_: Any) -> None:
        for group in stepped.param_groups:
            for param in group["params"]:
                increment_version(param)

    optimizer.register_step_post_hook(changed)


def _choose_fused(
    config: TrainingConfig, kwargs: dict[str, Any], groups: list[dict[str, Any]], device: torch.device
) -> None:
    """Build torch's fused kernels where they are safe: on CUDA, for weights all on the device, and for SGD
    only without momentum. A `fused: true` from `optimizer_args` where they are not is refused.

    Two of torch's fused kernels misbehave when a step is skipped on the device (`found_inf`: the NaN guard
    of `trainer.readback`, fp16's loss scaler): CPU-held weights (offloaded blocks' masters) read the flag
    through a non-blocking copy from the GPU, possibly before it arrives; and fused SGD creates its momentum
    buffers uninitialised on the first step and keeps them when that step is skipped.
    """
    momentum = config.optimizer is Optimizer.SGD and float(kwargs.get("momentum") or 0) > 0
    in_cpu_memory = any(param.device.type == "cpu" for group in groups for param in group["params"])
    if config.optimizer in FUSED_ON_CUDA and "fused" not in kwargs and "foreach" not in kwargs:
        kwargs["fused"] = (device.type == "cuda" and not in_cpu_memory and not momentum) or None
        return
    if kwargs.get("fused") is not True or device.type != "cuda":
        return
    if in_cpu_memory:
        reason = (
            "some trained weights stay in CPU memory (offloaded blocks), where a fused AdamW reads the step's "
            "skip flag before it arrives from the GPU"
        )
    elif momentum:
        reason = (
            "torch's fused SGD keeps uninitialised momentum when its first step is skipped (an fp16 overflow, "
            "a non-finite loss)"
        )
    else:
        return
    raise UserError(
        f"training.optimizer_args.fused is true, but {reason}",
        where="training.optimizer_args.fused",
        hint="Leave `fused` out: onetrainer fuses wherever it is safe.",
    )


def set_optimizer_mode(optimizer: torch.optim.Optimizer, *, train: bool) -> None:
    """Schedule-free optimizers keep two weight sequences and must be told which one the model shows."""
    method: Callable[[], None] | None = getattr(optimizer, "train" if train else "eval", None)
    if callable(method):
        method()


@contextlib.contextmanager
def evaluation_weights(optimizer: torch.optim.Optimizer) -> Iterator[None]:
    """The weights a schedule-free optimizer evaluates with, shown for the block (previews, validation, saves).

    Its `eval()` and `train()` each move the weights part of the way to its other sequence, and the round trip
    is not exact in floating point: training would go on from slightly other weights after every preview, so
    a run's result would depend on its preview and save cadence. The training weights are kept aside and put
    back exactly. Other optimizers show their one sequence: nothing to do.
    """
    import torch

    evaluate, train = getattr(optimizer, "eval", None), getattr(optimizer, "train", None)
    if not callable(evaluate) or not callable(train):
        yield
        return
    params = [param for group in optimizer.param_groups for param in group["params"]]
    with torch.no_grad():
        kept = [param.detach().clone() for param in params]
    evaluate()
    try:
        yield
    finally:
        train()
        with torch.no_grad():
            for param, weights in zip(params, kept, strict=True):
                param.copy_(weights)


def optimizer_state_classes() -> list[Callable[..., Any] | tuple[Callable[..., Any], str]]:
    """The tensor subclasses an optimizer of ours keeps its states in (torchao's 8-bit AdamW: `OptimState8bit`).

    A backup's `state.pt` is read with `weights_only=True`, which rebuilds plain tensors only; these installed
    classes are allowed besides (their code is the package's, not the file's). torchao is imported only when
    installed, so that a backup of any other run reads without it.
    """
    import importlib.util

    if importlib.util.find_spec("torchao") is None:
        return []
    try:
        with quiet_import():
            from torchao.optim.subclass_8bit import OptimState8bit
    except Exception:  # noqa: BLE001 - a torchao that cannot load (another torch) must not stop other backups
        return []
    return [OptimState8bit]
