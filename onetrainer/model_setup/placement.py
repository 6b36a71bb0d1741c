"""Where each component lives and in which dtype: one policy, applied in one place.

Every component gets a `Placement`: the device it runs on, the dtype its frozen weights are stored in
and the dtype it computes in. The policy comes from the run config (`model.dtype` for every frozen
part, `parts.<name>.weight_dtype` per part); fully trained parts always keep float32 weights, since
the optimizer would lose small updates in half precision, and a component whose config says
`force_upcast` (diffusers' mark of a VAE that overflows in fp16) is not stored in fp16 unless its part
asks for it by name. Memory levers that change how weights are
stored or where they wait between uses (quantised storage, offloading) plug in here, so no setup or
family places components on its own.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from onetrainer.util.dtypes import torch_dtype

if TYPE_CHECKING:
    import torch

    from onetrainer.model.diffusion import DiffusionModel
    from onetrainer.util.config.schema import TrainConfig


@dataclass(frozen=True)
class Placement:
    device: torch.device
    storage_dtype: torch.dtype
    """The dtype the component's weights are kept in."""
    compute_dtype: torch.dtype
    """The dtype its inputs are cast to (today always the storage dtype)."""


def placement_policy(
    model: DiffusionModel,
    config: TrainConfig,
    device: torch.device,
    dtype: torch.dtype,
    *,
    full_parts: Iterable[str] = (),
) -> dict[str, Placement]:
    """Frozen parts in `dtype` (or their `parts.<name>.weight_dtype`); fully trained parts in float32."""
    import torch

    fully_trained = set(full_parts)
    policy: dict[str, Placement] = {}
    for name, module in model.modules():
        part = config.parts.get(name)
        chosen = torch_dtype(part.weight_dtype) if part is not None and part.weight_dtype is not None else dtype
        unsafe = getattr(getattr(module, "config", None), "force_upcast", False) is True
        if chosen == torch.float16 and unsafe and (part is None or part.weight_dtype is None):
            chosen = torch.float32
        if name in fully_trained:
            chosen = torch.float32
        policy[name] = Placement(device=device, storage_dtype=chosen, compute_dtype=chosen)
    return policy


def apply_placement(model: DiffusionModel, policy: dict[str, Placement]) -> None:
    for name, module in model.modules():
        placement = policy[name]
        place(module, placement.device, placement.storage_dtype)


def place(module: torch.nn.Module, device: torch.device | str, dtype: torch.dtype | None = None) -> None:
    """Move a component, skipping diffusers' `to()` override, which warns on every dtype argument."""
    import torch

    torch.nn.Module.to(module, device=device, dtype=dtype)
