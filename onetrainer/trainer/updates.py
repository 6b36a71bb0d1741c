"""Updating trained tensors one at a time: for the fused backward pass, stochastic rounding and CPU-held states.

All three need the optimizer to update a single tensor: the fused backward pass as soon as its gradient
is ready, stochastic rounding because the update of a bf16 tensor is computed on a transient fp32 copy
(one tensor's worth of extra memory, not the model's), and optimizer offloading because the update
runs on a CPU copy (the *master*) that holds the optimizer state. The optimizer is stepped with its
parameter groups narrowed to the one tensor, which is exact for optimizers whose state and update are
per tensor (`util.config.memory.PER_TENSOR`; the config refuses the others).

- **Stochastic rounding**: a bf16 tensor (or master) is replaced by an fp32 copy for the step, its
  gradient cast to fp32, and the result rounded back (`rounding`), with a generator seeded by (run
  seed, step, tensor index), so a resumed run rounds as an uninterrupted one would. The optimizer
  state is then fp32, and stays so when a backup is restored (`keep_state_dtypes`: torch would cast
  it to the bf16 of the weights).
- **Optimizer offload** (`offload_to_cpu`): the optimizer is built over CPU masters, one per trained
  tensor (pinned when training on a GPU; a tensor already in CPU memory, like a fully trained,
  offloaded block's, is its own master; the pinned ones share one buffer of their size, `util.pinned`).
  A step copies the gradient out, updates the master, and copies the new value back.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from onetrainer.trainer.rounding import rounding_seed, stochastic_round_to_bf16

if TYPE_CHECKING:
    import torch


def offload_to_cpu(
    groups: list[dict[str, Any]], device: torch.device
) -> tuple[list[dict[str, Any]], dict[torch.nn.Parameter, torch.nn.Parameter]]:
    """Parameter groups over CPU masters of the trained tensors, and the tensor -> master map."""
    import torch

    from onetrainer.util.pinned import pinned_copies

    trained = [param for group in groups for param in group["params"]]
    copied = [param for param in trained if param.device.type != "cpu" or device.type == "cpu"]
    data = (pinned_copies if device.type == "cuda" else _cpu_copies)(copied)
    masters = {param: param for param in trained}
    masters.update((param, torch.nn.Parameter(copy)) for param, copy in zip(copied, data, strict=True))
    offloaded = [{**group, "params": [masters[param] for param in group["params"]]} for group in groups]
    return offloaded, masters


def _cpu_copies(tensors: list[torch.nn.Parameter]) -> list[torch.Tensor]:
    return [tensor.detach().to("cpu", copy=True) for tensor in tensors]


def keep_state_dtypes(optimizer: torch.optim.Optimizer) -> None:
    """Restore optimizer state in the dtypes it was saved in, not cast to its weights' dtype as torch does.

    The state of bf16 weights updated through fp32 copies is fp32; casting it to bf16 on resume would
    lose precision the uninterrupted run keeps.
    """
    saved: dict[int, dict[str, Any]] = {}

    def remember(_: torch.optim.Optimizer, state_dict: dict[str, Any]) -> None:
        saved.clear()
        saved.update({int(index): dict(values) for index, values in state_dict["state"].items()})

    def restore(optimizer: torch.optim.Optimizer) -> None:
        import torch

        params = [param for group in optimizer.param_groups for param in group["params"]]
        for index, values in saved.items():
            state = optimizer.state[params[index]]
            for key, value in values.items():
                current = state.get(key)
                if (
                    isinstance(value, torch.Tensor)
                    and isinstance(current, torch.Tensor)
                    and current.dtype != value.dtype
                ):
                    state[key] = value.to(current.device)
        saved.clear()

    optimizer.register_load_state_dict_pre_hook(remember)
    optimizer.register_load_state_dict_post_hook(restore)


@dataclass
class TensorUpdater:
    """Steps `optimizer` one trained tensor at a time (see the module docstring)."""

    optimizer: torch.optim.Optimizer
    trained: list[torch.nn.Parameter]
    stochastic_rounding: bool = False
    seed: int = 0
    masters: Mapping[torch.nn.Parameter, torch.nn.Parameter] = field(default_factory=dict)
    step_index: Callable[[], int] = lambda: 0
    """The optimizer step being taken (keys the rounding)."""
    _groups: dict[int, dict[str, Any]] = field(default_factory=dict, init=False)
    _index: dict[int, int] = field(default_factory=dict, init=False)
    _generators: dict[torch.device, torch.Generator] = field(default_factory=dict, init=False)

    def __post_init__(self) -> None:
        import torch

        self._groups = {id(param): group for group in self.optimizer.param_groups for param in group["params"]}
        self._index = {id(param): index for index, param in enumerate(self.trained)}
        with torch.no_grad():
            for param, master in self.masters.items():
                if master is not param:
                    master.copy_(param)

    def update_all(self) -> None:
        """Step every trained tensor that has a gradient, then clear the gradients."""
        for param in self.trained:
            if param.grad is not None:
                self.update(param)

    def update(self, param: torch.nn.Parameter) -> None:
        """Step one tensor with its gradient, and clear that gradient."""
        import torch

        target = self.masters.get(param, param)
        grad = param.grad
        if grad is None:
            return
        if target is not param:
            target.grad = grad = grad.to(target.device, target.dtype)
            param.grad = None
        stored = target.data
        rounded = self.stochastic_rounding and stored.dtype == torch.bfloat16
        if rounded:
            target.data = stored.float()
            target.grad = grad.float()
        self._step_one(target)
        if rounded:
            # back into the same storage: a pinned master stays pinned, so its copies to the GPU stay asynchronous
            stored.copy_(stochastic_round_to_bf16(target.data, self._generator(param, target.device)))
            target.data = stored
        target.grad = None
        if target is not param:
            with torch.no_grad():
                param.copy_(target, non_blocking=True)

    def _step_one(self, target: torch.nn.Parameter) -> None:
        group = self._groups[id(target)]
        groups, params = self.optimizer.param_groups, group["params"]
        self.optimizer.param_groups = [group]
        group["params"] = [target]
        try:
            self.optimizer.step()
        finally:
            group["params"] = params
            self.optimizer.param_groups = groups

    def _generator(self, param: torch.nn.Parameter, device: torch.device) -> torch.Generator:
        import torch

        generator = self._generators.get(device)
        if generator is None:
            generator = self._generators[device] = torch.Generator(device)
        generator.manual_seed(rounding_seed(self.seed, self.step_index(), self._index[id(param)]))
        return generator
