"""Measure the activation memory of one training forward pass on the meta device: shapes only, no weights.

What the backward pass needs is what autograd saves (`torch.autograd.graph.saved_tensors_hooks`), so
the denoiser runs once on meta tensors of the real shapes (batch, resolution, conditioning) and every
saved tensor is counted once. Weights that autograd saves are counted with the weights, not here.

Two things differ from a GPU run and are modelled:

- Attention: on the meta device `scaled_dot_product_attention` decomposes into the math kernel, which
  keeps the full attention matrix; GPUs run flash or memory-efficient attention, which keep the inputs,
  the output and one log-sum-exp per query row. The meta pass uses a stand-in that saves exactly that.
- Gradient checkpointing: a checkpointed block keeps only its inputs during the forward pass and
  recomputes its activations during the backward pass, one block at a time. The meta pass replaces the
  denoiser's checkpointing function with one that counts the inputs (unless they are saved anyway) and
  measures each block's own activations, of which the largest is added to the peak.

With activation offloading what is saved outside checkpointed blocks waits in CPU memory; only the
recomputed block stays on the GPU.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch


@dataclass
class ActivationMeasure:
    saved: int = 0
    """Bytes autograd keeps outside checkpointed blocks (all of it without checkpointing)."""
    block_inputs: int = 0
    """Bytes of the inputs checkpointed blocks keep for their recomputation."""
    largest_block: int = 0
    """The largest activations of one checkpointed block (recomputed in the backward pass)."""
    _seen: set[int] = field(default_factory=set)
    _keep: list[Any] = field(default_factory=list)

    def count(self, tensor: torch.Tensor) -> int:
        """Bytes of `tensor` the first time it is seen (0 for parameters and repeats)."""
        import torch

        if isinstance(tensor, torch.nn.Parameter) or id(tensor) in self._seen:
            return 0
        self._seen.add(id(tensor))
        self._keep.append(tensor)  # ids stay unique while the pass runs
        return tensor.numel() * tensor.element_size()


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
        return Attention.apply(query, key, value)

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


def measure_activations(denoiser: torch.nn.Module, run: Callable[[], Any], *, checkpointing: bool) -> ActivationMeasure:
    """Run `run()` (a forward pass through `denoiser` on meta tensors) and measure what it keeps."""
    import torch

    measure = ActivationMeasure()

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        measure.saved += measure.count(tensor)
        return tensor

    def checkpointed(function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        for value in (*args, *kwargs.values()):
            if isinstance(value, torch.Tensor):
                measure.block_inputs += measure.count(value)
        inner = ActivationMeasure()

        def pack_inner(tensor: torch.Tensor) -> torch.Tensor:
            inner.saved += inner.count(tensor)
            return tensor

        with torch.autograd.graph.saved_tensors_hooks(pack_inner, lambda tensor: tensor):
            output = function(*args, **kwargs)
        measure.largest_block = max(measure.largest_block, inner.saved)
        return output

    if checkpointing:
        denoiser.enable_gradient_checkpointing(gradient_checkpointing_func=checkpointed)  # type: ignore[operator]
    try:
        with _flash_attention(), torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            run()
    finally:
        if checkpointing:
            denoiser.disable_gradient_checkpointing()  # type: ignore[operator]
    return measure
