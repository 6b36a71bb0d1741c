"""Where each component lives and how its weights are stored: one policy, applied in one place.

Every component gets a `Placement`: the device it runs on, how its weights are stored, the dtype it
computes in, and how many of its blocks wait in CPU memory between uses. The policy comes from the run
config alone (`model.dtype` for every frozen part, `parts.<name>.weight_dtype` and
`parts.<name>.offload_blocks` per part), so the loader can honour the storage while it reads
(`quantised_parts`) and the dry run can estimate memory before anything loads.

- Frozen parts take their weight dtype: fp32, bf16 or fp16, or a weight-only quantised format of their
  linear layers (fp8, int8, nf4; see `model.quantised`) computed in bf16 (fp16 when `model.dtype` is
  fp16), with their other weights in that compute dtype. A component whose config says
  `force_upcast` (diffusers' mark of a VAE that overflows in fp16) is not stored in fp16 unless its
  part asks for it by name.
- Fully trained parts keep fp32 weights, or bf16 when their part asks for it (the config requires
  stochastic rounding then); adapters and embeddings always train in fp32.
- The denoiser's offloaded blocks are handled by `model_setup.offload`.

`DiffusionSetup.prepare` applies the policy in two steps: `apply_storage` quantises before adapters
are added (so peft wraps the quantised layers in its quantised LoRA layers), `apply_placement` moves
and casts once the trained tensors are known. No setup or family places components on its own.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from onetrainer.model.quantised import QuantisedStorage, quantise_module
from onetrainer.util.dtypes import is_quantised, layer_dtype, torch_dtype
from onetrainer.util.family import Role

if TYPE_CHECKING:
    import torch

    from onetrainer.model.diffusion import DiffusionModel
    from onetrainer.model_setup.offload import BlockOffloader
    from onetrainer.util.config.schema import TrainConfig


@dataclass(frozen=True)
class Placement:
    device: torch.device
    storage_dtype: torch.dtype
    """The dtype of the component's floating-point weights (all of them, or those not quantised)."""
    compute_dtype: torch.dtype
    """The dtype it computes in (its inputs are cast to it)."""
    quantised: str | None = None
    """fp8, int8 or nf4 for the linear layers of a frozen part; None when nothing is quantised."""
    offload_blocks: int | float = 0
    """Denoiser blocks kept in CPU memory between uses: a count, or a fraction when a float."""

    @property
    def storage(self) -> str:
        """The weight dtype's name as users write it (`fp8`, `bf16`, ...)."""
        from onetrainer.util.dtypes import dtype_name

        return self.quantised or dtype_name(self.storage_dtype)


def quantised_compute_dtype(model_dtype: torch.dtype) -> torch.dtype:
    """Quantised parts compute in bf16, or in fp16 when the run asks for fp16 frozen weights (older GPUs)."""
    import torch

    return torch.float16 if model_dtype == torch.float16 else torch.bfloat16


def quantised_parts(config: TrainConfig, *, quantise_on: str = "cpu") -> dict[str, QuantisedStorage]:
    """The components stored quantised, from the config alone: what the loader quantises while reading (on
    `quantise_on`, the training device)."""
    dtype = torch_dtype(config.model.dtype)
    return {
        name: QuantisedStorage(part.weight_dtype.value, quantised_compute_dtype(dtype), quantise_on)
        for name, part in config.parts.items()
        if part.weight_dtype is not None and is_quantised(part.weight_dtype)
    }


def placement_policy(
    model: DiffusionModel,
    config: TrainConfig,
    device: torch.device,
    dtype: torch.dtype,
    *,
    full_parts: Iterable[str] = (),
) -> dict[str, Placement]:
    """Each component's placement under `config`, frozen parts defaulting to `dtype` (see the module docstring)."""
    import torch

    fully_trained = set(full_parts)
    quantised = quantised_parts(config)
    policy: dict[str, Placement] = {}
    for name, module in model.modules():
        part = config.parts.get(name)
        asked = part.weight_dtype if part is not None else None
        denoiser = model.spec.component(name).role is Role.DENOISER
        offload = part.offload_blocks if part is not None and denoiser else 0
        if name in quantised:
            compute = quantised[name].compute_dtype
            policy[name] = Placement(device, compute, compute, quantised[name].format, offload)
            continue
        if name in fully_trained:
            chosen = torch.bfloat16 if asked is not None and asked.value == "bf16" else torch.float32
        else:
            chosen = torch_dtype(asked) if asked is not None else dtype
            unsafe = getattr(getattr(module, "config", None), "force_upcast", False) is True
            if chosen == torch.float16 and unsafe and asked is None:
                chosen = torch.float32
        policy[name] = Placement(device, chosen, chosen, None, offload)
    return policy


def apply_storage(model: DiffusionModel, policy: Mapping[str, Placement]) -> None:
    """Quantise the linear layers of the parts stored quantised (a no-op where the loader did it)."""
    for name, module in model.modules():
        placement = policy[name]
        if placement.quantised is not None:
            quantise_module(module, placement.quantised, placement.compute_dtype, quantise_on=placement.device)


def apply_placement(
    model: DiffusionModel,
    policy: Mapping[str, Placement],
    trained: Mapping[str, list[torch.nn.Parameter]],
    *,
    fully_trained: Iterable[str] = (),
    pin_memory: bool | None = None,
) -> dict[str, BlockOffloader]:
    """Move and cast every component, give trained tensors their dtype, and offload the blocks asked for.

    `trained` maps a component (or "embeddings") to its trained tensors: those of a fully trained part
    keep the part's storage dtype, every other trained tensor (adapters, embeddings) fp32. A component
    that offloads blocks is first placed in CPU memory, and its `BlockOffloader` moves what stays
    resident to the device. Returns the offloaders by component.
    """
    import torch

    from onetrainer.model_setup.offload import BlockOffloader, offload_blocks

    full = set(fully_trained)
    device = policy[model.spec.denoiser.name].device  # frozen text encoders may wait on the CPU
    offloading = {name for name, placement in policy.items() if placement.offload_blocks}
    for name, module in model.modules():
        placement = policy[name]
        place(module, "cpu" if name in offloading else placement.device, placement.storage_dtype)
    for part, params in trained.items():
        dtype = policy[part].storage_dtype if part in full else torch.float32
        for param in params:
            target = param.device if part in offloading else device
            if param.dtype != dtype or param.device != target:
                param.data = param.data.to(target, dtype)
    offloaders: dict[str, BlockOffloader] = {}
    for name, module in model.modules():
        placement = policy[name]
        if name in offloading:
            blocks = offload_blocks(module, model.spec.component(name), placement.offload_blocks)
            offloaders[name] = BlockOffloader(
                module, blocks, placement.device, offload_trained=name in full, pin_memory=pin_memory
            )
    return offloaders


def place(module: torch.nn.Module, device: torch.device | str, dtype: torch.dtype | None = None) -> None:
    """Move a component, skipping diffusers' `to()` override, which warns on every dtype argument.

    A component already there is left as it is: a step that encodes its own batch asks for its encoders
    every time, and `Module.to` would reassign every weight even when none moves.
    """
    import torch

    kept = kept_in_fp32(module) if dtype == torch.float16 else []
    if not _placed(module, torch.device(device), dtype, kept):
        torch.nn.Module.to(module, device=device, dtype=dtype)
        for layer in kept:
            torch.nn.Module.to(layer, dtype=torch.float32)


def kept_in_fp32(module: torch.nn.Module) -> list[torch.nn.Module]:
    """The layers a transformers model keeps in fp32 when it runs in fp16 (`_keep_in_fp32_modules`: T5's `wo`,
    whose activations overflow fp16), as its own `from_pretrained(torch_dtype=float16)` does."""
    import torch

    return [
        layer for path, layer in module.named_modules() if layer_dtype(module, path, torch.float16) != torch.float16
    ]


def _placed(
    module: torch.nn.Module, device: torch.device, dtype: torch.dtype | None, kept: list[torch.nn.Module]
) -> bool:
    """Whether every tensor of `module` is on `device` and, if floating point, of `dtype` (when given; fp32 in
    the `kept` layers)."""
    import itertools

    import torch

    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    in_fp32 = {id(tensor) for layer in kept for tensor in itertools.chain(layer.parameters(), layer.buffers())}

    def placed(tensor: torch.Tensor) -> bool:
        if tensor.device != device:
            return False
        if dtype is None or not (tensor.is_floating_point() or tensor.is_complex()):
            return True
        return tensor.dtype == (torch.float32 if id(tensor) in in_fp32 else dtype)

    return all(placed(tensor) for tensor in itertools.chain(module.parameters(), module.buffers()))
