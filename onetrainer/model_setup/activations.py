"""Measure the activation memory of one training step on the meta device: shapes only, no weights.

The denoiser runs one forward and one backward pass on meta tensors of the real shapes (batch,
resolution, conditioning), and every tensor storage the pass creates is counted while it lives: what
autograd saves, the recomputation of checkpointed blocks, and the gradients of activations in flight
during the backward pass. The peak of that count is the activations' share of the step's peak. The
trained tensors' own gradients are dropped as they arrive (the estimate counts them on their own line),
and storages that exist before the pass (weights, inputs) are not counted.

What differs from a GPU run, and how it is modelled:

- Attention: on the meta device `scaled_dot_product_attention` decomposes into the math kernel, which
  keeps the full attention matrix; GPUs run flash or memory-efficient attention, which keep the inputs,
  the output and one log-sum-exp per query row. The pass uses a stand-in that saves exactly that.
- Weights: the denoiser is placed in the compute dtype. A weight the layers compute with as it is stored
  costs nothing here (what autograd saves of it is a view). Any other is copied as training copies it
  (`WeightUses`): at each use (a frozen weight autocast casts, an fp8/int8 one dequantised per layer),
  or once for the whole pass (a trained weight, whose cast autocast caches).
- Autocast: the adapters keep their fp32 weights, matrix products and convolutions cast their inputs to
  the compute dtype, and normalisations and softmax to fp32, as CUDA's autocast does, so the copies
  autocast makes are counted.
- Activation offloading (`offload.activations_in_cpu_memory`): what is saved outside checkpointed blocks
  is counted as CPU memory instead, and comes back (is allocated again) when the backward pass needs it.

This was checked against real training steps of the tiny models on the CPU, whose tensors were counted
the same way (tests/model_setup/test_estimate.py).
"""

from __future__ import annotations

import contextlib
import functools
import weakref
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

AUTOCAST_FUNCTIONS = ("linear", "conv1d", "conv2d", "conv3d", "conv_transpose2d", "matmul", "mm", "bmm", "addmm")
"""Functions autocast runs in the lower precision (`torch.nn.functional` or `torch`): their inputs are cast."""
AUTOCAST_FP32_FUNCTIONS = ("group_norm", "layer_norm", "softmax", "log_softmax")
"""The functions of CUDA autocast's float32 list that denoisers call: their inputs are cast up, their outputs are
fp32 (the CPU's autocast keeps these in the lower precision)."""


@dataclass
class ActivationMeasure:
    peak: int = 0
    """The most bytes alive at once during the pass, besides the weights and the inputs."""
    offloaded: int = 0
    """Bytes saved to CPU memory (with activation offloading)."""


def storage_key(tensor: torch.Tensor) -> int:
    """What tells storages apart, views of one storage alike (meta tensors have storages too, without data)."""
    return tensor.untyped_storage()._cdata


def live_bytes_mode(existing: Iterable[torch.Tensor] = ()) -> Any:
    """A dispatch mode that counts the bytes of every storage an operation creates while it is active, until the
    storage is freed (`live`), and the most at once (`peak`); the storages of `existing` are not counted."""
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_flatten

    class LiveBytes(TorchDispatchMode):
        def __init__(self) -> None:
            super().__init__()
            self.live = 0
            self.peak = 0
            self.known: set[int] = {storage_key(tensor) for tensor in existing}

        def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
            import torch

            out = func(*args, **(kwargs or {}))
            for value in tree_flatten(out)[0]:
                if isinstance(value, torch.Tensor):
                    self._count(value.untyped_storage())
            return out

        def _count(self, storage: Any) -> None:
            key = storage._cdata
            if key in self.known:
                return
            self.known.add(key)
            size = storage.nbytes()
            self.live += size
            self.peak = max(self.peak, self.live)
            weakref.finalize(storage, self._free, key, size)

        def _free(self, key: int, size: int) -> None:
            self.live -= size
            self.known.discard(key)

    return LiveBytes()


def _flash_like() -> Callable[..., Any]:
    """A meta stand-in for `scaled_dot_product_attention` that saves what flash attention saves."""
    import torch

    class Attention(torch.autograd.Function):
        @staticmethod
        def forward(ctx: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
            out = query.new_empty((*query.shape[:-1], value.shape[-1]))
            rows = query.new_empty(query.shape[:-1], dtype=torch.float32)
            ctx.save_for_backward(query, key, value, out, rows)
            return out

        @staticmethod
        def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, ...]:
            query, key, value, _, _ = ctx.saved_tensors
            return torch.empty_like(query), torch.empty_like(key), torch.empty_like(value)

    def attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        dtype = torch.promote_types(query.dtype, value.dtype)
        return Attention.apply(query.to(dtype), key.to(dtype), value.to(dtype))

    return attention


@contextlib.contextmanager
def _flash_attention() -> Iterator[None]:
    import torch.nn.functional as F

    original = F.scaled_dot_product_attention
    F.scaled_dot_product_attention = _flash_like()
    try:
        yield
    finally:
        F.scaled_dot_product_attention = original


def _layer_inputs(compute_dtype: torch.dtype | None, per_use: set[int]) -> Any:
    """A function mode, CUDA's autocast on meta tensors: casts the floating inputs of `AUTOCAST_FUNCTIONS` to
    `compute_dtype` (None: no autocast) and those of `AUTOCAST_FP32_FUNCTIONS` to fp32, and gives a weight whose
    storage is in `per_use` as a fresh copy, as a cast or a dequantisation does at each use."""
    return _layer_inputs_mode()(compute_dtype, per_use)


@functools.cache
def _layer_inputs_mode() -> Any:
    """The class of `_layer_inputs`' mode, made once (a mode is entered for every checkpointed block's run)."""
    import torch
    import torch.nn.functional as F
    from torch.overrides import TorchFunctionMode

    def named(names: tuple[str, ...]) -> set[Any]:
        return {getattr(module, name) for module in (F, torch) for name in names if hasattr(module, name)}

    lower, fp32 = named(AUTOCAST_FUNCTIONS), named(AUTOCAST_FP32_FUNCTIONS)

    class LayerInputs(TorchFunctionMode):
        def __init__(self, compute_dtype: torch.dtype | None, per_use: set[int]) -> None:
            super().__init__()
            self.compute_dtype, self.per_use = compute_dtype, per_use

        def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
            kwargs = kwargs or {}
            if self.compute_dtype is not None and func in fp32:
                args, kwargs = _each_input(self._upcast, args, kwargs)
            if func in lower:
                args, kwargs = _each_input(self._prepare, args, kwargs)
            return func(*args, **kwargs)

        def _upcast(self, value: torch.Tensor) -> torch.Tensor:
            return value.float()

        def _prepare(self, value: torch.Tensor) -> torch.Tensor:
            dtype = self.compute_dtype or value.dtype
            copy = storage_key(value) in self.per_use
            return value.to(dtype, copy=copy) if copy or value.dtype != dtype else value

    return LayerInputs


def _each_input(change: Callable[[Any], Any], args: Any, kwargs: dict[str, Any]) -> tuple[tuple[Any, ...], dict]:
    """`args` and `kwargs` with `change` applied to their floating-point tensors."""
    import torch

    def one(value: Any) -> Any:
        return change(value) if isinstance(value, torch.Tensor) and value.is_floating_point() else value

    return tuple(one(value) for value in args), {key: one(value) for key, value in kwargs.items()}


@contextlib.contextmanager
def _offload_to_cpu(measure: ActivationMeasure) -> Iterator[None]:
    """Activation offloading on meta tensors: a saved tensor's bytes count as CPU memory, and it is allocated again when
    the backward pass unpacks it."""
    import torch

    def pack(tensor: torch.Tensor) -> tuple[Any, ...]:
        measure.offloaded += tensor.numel() * tensor.element_size()  # each saved tensor gets a CPU copy of its own
        return tensor.shape, tensor.dtype

    def unpack(packed: tuple[Any, ...]) -> torch.Tensor:
        shape, dtype = packed
        return torch.empty(shape, dtype=dtype, device="meta")

    with torch.autograd.graph.saved_tensors_hooks(pack, unpack):
        yield


@dataclass
class WeightUses:
    """How training uses the denoiser's weights, which decides what the pass counts of them."""

    as_stored: list[torch.Tensor] = field(default_factory=list)
    """Used as they are stored (in the compute dtype; nf4, which bitsandbytes dequantises again in the backward
    pass instead of keeping a copy): what autograd saves of them is a view, which takes no memory."""
    per_use: list[torch.Tensor] = field(default_factory=list)
    """Copied at each use (frozen weights autocast casts; fp8 and int8, dequantised per layer; trained ones of
    offloaded blocks, which compute with device copies): each copy lives as long as autograd keeps it. Any
    other weight (a trained one autocast casts, and caches for the whole forward pass) is counted once, for its
    compute-dtype copy, for the whole pass."""


def measure_activations(
    denoiser: torch.nn.Module,
    run: Callable[[], torch.Tensor],
    *,
    checkpointing: bool,
    weights: WeightUses | None = None,
    inputs: Iterable[torch.Tensor] = (),
    compute_dtype: torch.dtype | None = None,
    offload: bool = False,
) -> ActivationMeasure:
    """Run `run()` (a forward pass through `denoiser` on meta tensors) and a backward pass from its output, and
    measure the bytes they hold at their peak (see the module docstring). `inputs`: tensors made before the
    pass; `compute_dtype`: autocast's (None without autocast)."""
    weights = weights or WeightUses(as_stored=list(denoiser.parameters()))
    per_use = {storage_key(weight) for weight in weights.per_use}
    measure = ActivationMeasure()
    trained = [param for param in denoiser.parameters() if param.requires_grad]
    layer_inputs = functools.partial(_layer_inputs, compute_dtype, per_use)
    counter = live_bytes_mode([*weights.as_stored, *weights.per_use, *denoiser.buffers(), *inputs])
    drops = [param.register_post_accumulate_grad_hook(_drop_grad) for param in trained]
    try:
        if checkpointing:
            recompute = functools.partial(_checkpoint, layer_inputs=layer_inputs)
            denoiser.enable_gradient_checkpointing(gradient_checkpointing_func=recompute)  # type: ignore[operator]
        with contextlib.ExitStack() as stack:
            stack.enter_context(_flash_attention())
            stack.enter_context(layer_inputs())
            if offload:
                stack.enter_context(_offload_to_cpu(measure))
            stack.enter_context(counter)
            output = run()
            if output.requires_grad:
                output.float().sum().backward()
            del output
    finally:
        for handle in drops:
            handle.remove()
        if checkpointing:
            denoiser.disable_gradient_checkpointing()  # type: ignore[operator]
    measure.peak = counter.peak
    return measure


def _checkpoint(function: Callable[..., Any], *args: Any, layer_inputs: Callable[[], Any], **kwargs: Any) -> Any:
    """torch's checkpoint, whose recomputation in the backward pass prepares the layers' inputs as the forward
    pass did: function modes, unlike dispatch modes, do not reach it."""
    from torch.utils.checkpoint import checkpoint

    def block(*inner: Any, **named: Any) -> Any:
        with layer_inputs():
            return function(*inner, **named)

    return checkpoint(block, *args, use_reentrant=False, preserve_rng_state=False, **kwargs)


def _drop_grad(param: torch.Tensor) -> None:
    """The trained tensors' gradients are counted on a line of their own."""
    param.grad = None
