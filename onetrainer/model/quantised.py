"""Weight-only quantised storage of frozen linear layers: fp8, int8 (torchao) and nf4 (bitsandbytes).

Which library per format, and why:

- **fp8 and int8: torchao** (`Float8WeightOnlyConfig`, `Int8WeightOnlyConfig`). The weight becomes a
  tensor subclass (e4m3 or int8 values with one scale per output row) inside the same `nn.Linear`, and
  is dequantised to the compute dtype (bf16) per layer inside `F.linear`, on any device, the CPU
  included. Autograd passes through it to the layer's input, so LoRA trains on top; peft recognises
  torchao weights (its `TorchaoLoraLinear`, and dequantisation for DoRA). bitsandbytes has no fp8,
  and its int8 (LLM.int8, with outlier decomposition) is an inference format that needs CUDA.
- **nf4: bitsandbytes** (`Linear4bit`, NF4 with double-quantised block scales): the QLoRA format
  itself, with CUDA kernels; peft wraps it in its own 4-bit LoRA layer (told by the component's
  `is_loaded_in_4bit` flag, as transformers and diffusers set it). torchao's NF4 tensor has no peft
  layer. On the CPU bitsandbytes runs a slow fallback (enough for tests).

Only `nn.Linear` layers are quantised; a quantised part keeps its other weights (convolutions, norms,
embeddings) in the compute dtype. Each layer is converted on its own, so a model is never held twice:
`quantise_linear` takes one layer, `quantise_module` walks a component, and the streaming loader
(`model_loader.streaming`) quantises each layer as its weight is read. Every quantised layer casts its
input to the compute dtype (fp8 computes only in the dtype it dequantises to).

Both libraries are optional (`pip install "onetrainer[quant]"`); choosing a format without its
library is a user error naming the extra.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from onetrainer.util.dtypes import QUANTISED, layer_dtype
from onetrainer.util.errors import UserError
from onetrainer.util.quiet import quiet_import

if TYPE_CHECKING:
    import torch

INSTALL_HINT = 'Install the quantisation libraries with `pip install "onetrainer[quant]"` (torchao, bitsandbytes).'
LIBRARY = {"fp8": "torchao", "int8": "torchao", "nf4": "bitsandbytes"}
"""The library that stores each quantised format."""
NF4_BLOCK = 64
FOUR_BIT_FLAG = "is_loaded_in_4bit"
"""The attribute peft reads on a model to wrap its bitsandbytes 4-bit layers in its 4-bit LoRA layers."""


@dataclass(frozen=True)
class QuantisedStorage:
    """How one component's linear layers are stored: a quantised `format`, computed in `compute_dtype`,
    quantised on the device `quantise_on` (see `quantise_linear`)."""

    format: str
    compute_dtype: torch.dtype
    quantise_on: str = "cpu"


def require_library(storage: str, where: str = "parts") -> Any:
    """The library module of a quantised format; a user error naming the extra when it is missing."""
    import importlib

    if storage not in QUANTISED:
        raise ValueError(f"{storage} is not a quantised format")
    name = LIBRARY[storage]
    try:
        with quiet_import():
            return importlib.import_module(name)
    except ImportError:
        raise UserError(
            f"weight dtype {storage} needs the `{name}` package, which is not installed", where=where, hint=INSTALL_HINT
        ) from None


def _torchao_config(storage: str) -> Any:
    with quiet_import():
        from torchao.quantization import Float8WeightOnlyConfig, Int8WeightOnlyConfig

    if storage == "fp8":
        return Float8WeightOnlyConfig(set_inductor_config=False)
    return Int8WeightOnlyConfig(set_inductor_config=False)


def _cast_input(dtype: torch.dtype) -> Any:
    def hook(_: torch.nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
        first, *rest = args
        return (first.to(dtype), *rest) if first.dtype != dtype else args

    return hook


def quantise_linear(
    layer: torch.nn.Linear, storage: str, compute_dtype: torch.dtype, *, quantise_on: str | torch.device = "cpu"
) -> torch.nn.Module:
    """`layer` with its weight stored as `storage`; the same module for torchao, a new `Linear4bit` for nf4.

    The bias stays a plain tensor in `compute_dtype`. The weight is cast to `compute_dtype` first, which
    is the dtype the layer computes in. An nf4 weight is quantised on `quantise_on` (the training GPU:
    bitsandbytes' CPU quantiser takes minutes for a 12 B transformer) and comes back to the weight's
    device, where the placement policy takes over.
    """
    import torch

    require_library(storage)
    weight = layer.weight.detach().to(compute_dtype)
    bias = None if layer.bias is None else layer.bias.detach().to(compute_dtype)
    if storage == "nf4":
        import bitsandbytes as bnb

        four_bit: Any = bnb.nn.Linear4bit(
            layer.in_features,
            layer.out_features,
            bias=bias is not None,
            compute_dtype=compute_dtype,
            compress_statistics=True,
            quant_type="nf4",
            device="meta",
        )
        packed = bnb.nn.Params4bit(
            weight, requires_grad=False, blocksize=NF4_BLOCK, compress_statistics=True, quant_type="nf4"
        )._quantize(torch.device(quantise_on))
        four_bit.weight = packed if packed.device == weight.device else packed.to(weight.device)
        four_bit.weight.module = four_bit
        # bitsandbytes repacks a 4-bit weight in place for CPU inference (and fails below 64 inputs); the
        # stored format stays the one that moves to a GPU and that the memory accounting describes
        four_bit.support_avx512bf16_for_cpu = False
        quantised: torch.nn.Module = four_bit
    else:
        from torchao.quantization import quantize_

        layer.weight = torch.nn.Parameter(weight, requires_grad=False)
        with quiet_import():
            quantize_(layer, _torchao_config(storage), filter_fn=None)
        if storage == "fp8":
            _keep_fp8_values(layer.weight, weight)
        quantised = layer
    if bias is not None:
        quantised.bias = torch.nn.Parameter(bias, requires_grad=False)
    quantised.register_forward_pre_hook(_cast_input(compute_dtype))
    return quantised


def _keep_fp8_values(quantised: Any, weight: torch.Tensor) -> None:
    """A checkpoint stored in fp8 (`flux1-dev-fp8`) holds values on the e4m3 grid already; quantised again
    with torchao's per-row scale (the row's largest value / 448), two thirds of them moved off it, by up to
    5 %. Where every value of the weight survives a cast to e4m3 unchanged, the values are kept as they are,
    at a scale of 1."""
    import torch

    exact = weight.to(torch.float8_e4m3fn)
    if not torch.equal(exact.to(weight.dtype), weight):
        return
    with torch.no_grad():
        quantised.qdata.copy_(exact.to(quantised.qdata.device))
        quantised.scale.fill_(1.0)


def linear_storage(layer: torch.nn.Module) -> str | None:
    """The quantised format of a linear layer's weight, or None when it is a plain tensor."""
    weight = getattr(layer, "weight", None)
    if weight is None:
        return None
    kind = type(weight).__name__
    if kind == "Params4bit":
        return "nf4"
    if kind == "Float8Tensor":
        return "fp8"
    if kind == "Int8Tensor":
        return "int8"
    return None


def quantisable_linears(module: torch.nn.Module) -> list[str]:
    """Paths of the plain `nn.Linear` layers of `module` (not yet quantised, not adapter layers)."""
    import torch

    return [
        name
        for name, child in module.named_modules()
        if type(child) is torch.nn.Linear and linear_storage(child) is None and ".lora_" not in f".{name}"
    ]


def quantise_module(
    module: torch.nn.Module, storage: str, compute_dtype: torch.dtype, *, quantise_on: str | torch.device = "cpu"
) -> int:
    """Quantise every plain linear layer of a component in place, one at a time; returns how many.

    Its other floating-point weights and buffers take `compute_dtype`, but for the layers the model keeps in
    fp32 under fp16 (`util.dtypes.layer_dtype`), which compute in fp32 whatever their storage. Quantised layers
    already there are left as they are, so calling it on a component the loader quantised changes nothing.
    """
    import torch

    count = 0
    for name in quantisable_linears(module):
        parent_name, _, child_name = name.rpartition(".")
        parent = module.get_submodule(parent_name) if parent_name else module
        layer = getattr(parent, child_name)
        compute = layer_dtype(module, name, compute_dtype)
        quantised = quantise_linear(layer, storage, compute, quantise_on=quantise_on)
        if quantised is not layer:
            setattr(parent, child_name, quantised)
        count += 1
    for path, child in module.named_modules():
        dtype = layer_dtype(module, path, compute_dtype)
        for param in child._parameters.values():
            if param is None or type(param) is not torch.nn.Parameter or not param.is_floating_point():
                continue  # quantised weights keep their storage
            if param.dtype != dtype:
                param.data = param.data.to(dtype)
        for key, buffer in list(child._buffers.items()):
            if buffer is not None and buffer.is_floating_point() and buffer.dtype != dtype:
                child._buffers[key] = buffer.to(dtype)
    mark_quantised(module, storage)
    return count


def mark_quantised(module: torch.nn.Module, storage: str) -> None:
    """Record the format on the component: peft reads the 4-bit flag to choose its layer class."""
    if storage == "nf4":
        setattr(module, FOUR_BIT_FLAG, True)
    module._onetrainer_storage = storage  # type: ignore[assignment]


def module_storage(module: torch.nn.Module) -> str | None:
    """The quantised format `quantise_module` (or the streaming loader) gave a component, if any."""
    storage = getattr(module, "_onetrainer_storage", None)
    return storage if isinstance(storage, str) else None


def plain_tensors(tensor: Any) -> list[torch.Tensor]:
    """The plain tensors that hold a (possibly quantised) tensor's data, scales included; a plain tensor itself."""
    flatten = getattr(type(tensor), "__tensor_flatten__", None)
    if flatten is not None and type(tensor).__name__ != "Parameter":
        names, _ = tensor.__tensor_flatten__()
        return [inner for name in names for inner in plain_tensors(getattr(tensor, name))]
    found = [tensor.data if hasattr(tensor, "data") else tensor]
    state = getattr(tensor, "quant_state", None)
    while state is not None:
        found += [value for value in (state.absmax, state.code) if value is not None]
        if getattr(state, "offset", None) is not None:
            found.append(state.offset)
        state = getattr(state, "state2", None)
    return found


def storage_bytes(tensor: Any) -> int:
    """Bytes a weight occupies in memory: its values and every scale (and code table) it keeps."""
    return sum(inner.numel() * inner.element_size() for inner in plain_tensors(tensor))


def quantised_values(tensor: Any) -> torch.Tensor:
    """The tensor holding a quantised weight's values (e4m3, int8, or packed 4-bit in uint8)."""
    return plain_tensors(tensor)[0]


@contextlib.contextmanager
def quiet_adapters() -> Iterator[None]:
    """peft warns that adapters on torchao weights cannot be merged into them; onetrainer never merges there."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*TorchaoLoraLinear.*")
        yield
