"""DoRA's two layouts: a magnitude per output row (peft, diffusers) or per input column (A1111, Forge, ComfyUI).

DoRA rescales the adapted weight W + s·ΔW (s = alpha / rank) to learned magnitudes. peft learns one
per output row. The DoRA paper, LyCORIS with `wd_on_out=False`, and the UIs that read kohya files
normalise per input column instead, and only that layout is computed right by all of them:

- A1111 (`extensions-builtin/Lora/network.py`, `NetworkModule.apply_weight_decompose`) divides W + s·ΔW
  by its column norms, whatever the shape of `dora_scale`: a per-row scale broadcasts into a scrambled
  matrix, with no error.
- ComfyUI (`comfy/weight_adapter/base.py`, `weight_decompose`) and Forge (`backend/patcher/lora.py`,
  `weight_decompose`) normalise a `[1, in]` scale per column like A1111, but treat a scale whose first
  dimension is the output size as per-row and divide by the norms of W instead of W + s·ΔW.
- diffusers' `load_lora_weights` drops `dora_scale` from kohya files (with a warning) and reads peft's
  per-row magnitudes from its own layout.

One layout cannot be rewritten as the other without a full-rank delta, so the axis is chosen before
training, from the output format (`dora_axis`): a kohya file trains magnitudes per input column and
stores them as `dora_scale` of shape [1, in] (Linear) or [1, in, 1, 1] (Conv2d); a peft file trains
peft's own per-row DoRA. Input-axis layers are peft DoRA layers whose magnitude module is replaced by
`input_dora_layer`: peft keeps injecting, naming and state-dict handling them, and the magnitude's own
name (`lora_magnitude_vector.<adapter>.input_magnitude`) keeps a backup of one axis from loading into
the other.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, cast

from onetrainer.util.config.output import SaveFormat, dora_on_output
from onetrainer.util.errors import UserError

if TYPE_CHECKING:
    import torch

INPUT = "input"
OUTPUT = "output"
DORA_AXES = (INPUT, OUTPUT)


def dora_axis(fmt: SaveFormat | str) -> str:
    """The axis a DoRA must be trained on for the loaders of `fmt` to compute it exactly (module docstring)."""
    return OUTPUT if dora_on_output(fmt) else INPUT


def column_norm(weight: torch.Tensor) -> torch.Tensor:
    """L2 norm over everything but the input axis, kept as [1, in] / [1, in, 1, 1] so it broadcasts on W."""
    import torch

    return torch.linalg.vector_norm(weight, dim=(0, *range(2, weight.ndim)), keepdim=True)


def row_norm(weight: torch.Tensor) -> torch.Tensor:
    """L2 norm over everything but the output axis, as [out, 1] / [out, 1, 1, 1]."""
    return weight.flatten(1).norm(dim=1).reshape(-1, *([1] * (weight.ndim - 1)))


def dora_weight(weight: torch.Tensor, delta: torch.Tensor, magnitude: torch.Tensor, axis: str) -> torch.Tensor:
    """The weight a DoRA layer computes: W + ΔW rescaled so each row or column has its magnitude.

    `delta` is already scaled by alpha / rank; `magnitude` is in either layout's own shape (peft's [out]
    or [1, out, 1, 1] for rows, [1, in] or [1, in, 1, 1] for columns).
    """
    combined = weight + delta
    norm = column_norm(combined) if axis == INPUT else row_norm(combined)
    return combined * (magnitude.to(combined.dtype).reshape(norm.shape) / norm)


@functools.cache
def _input_dora_class() -> type:
    import torch
    import torch.nn.functional as F

    class InputDoraLayer(torch.nn.Module):
        """The extra output of a DoRA layer normalised per input column, called by peft in its DoRA layer's place.

        W' = (W + s·ΔW) · diag(m / ‖W + s·ΔW‖_col), so W'x = (W + s·ΔW)(c ⊙ x) with c = m / ‖·‖_col, and the
        extra output over the base layer's W x is W((c - 1) ⊙ x) + s·B(A(c ⊙ x)). As in peft (and the DoRA
        paper, section 4.3), the norm is treated as a constant: no gradient flows through it.
        """

        def __init__(self, magnitude: torch.Tensor) -> None:
            super().__init__()
            self.input_magnitude = torch.nn.Parameter(magnitude, requires_grad=True)

        def forward(
            self,
            x: torch.Tensor,
            *,
            lora_A: torch.nn.Linear | torch.nn.Conv2d,
            lora_B: torch.nn.Linear | torch.nn.Conv2d,
            scaling: float,
            base_layer: torch.nn.Linear | torch.nn.Conv2d,
            base_result: torch.Tensor | None = None,
            adapter_name: str = "default",
        ) -> torch.Tensor:
            weight = base_weight(base_layer).to(x.dtype)
            delta = lora_delta(lora_A.weight, lora_B.weight, weight.shape).to(x.dtype)
            norm = column_norm(weight + scaling * delta.detach()).detach()
            scale = (self.input_magnitude.to(x.dtype) / norm).reshape(self.input_magnitude.shape)
            if weight.ndim == 2:
                scale = scale.reshape(-1)
                base = F.linear(x * (scale - 1), weight)
            else:
                conv = cast("torch.nn.Conv2d", base_layer)  # a 4-D weight: peft's DoRA layers are Linear or Conv2d
                base = F.conv2d(
                    x * (scale - 1),
                    weight,
                    stride=conv.stride,
                    padding=conv.padding,
                    dilation=conv.dilation,
                    groups=conv.groups,
                )
            return base + lora_B(lora_A(x * scale)) * scaling

    return InputDoraLayer


def base_weight(layer: torch.nn.Module) -> torch.Tensor:
    """The adapted layer's weight as plain values: dequantised when it is stored quantised (fp8, int8, nf4)."""
    from peft.utils.integrations import dequantize_module_weight

    weight: torch.Tensor = dequantize_module_weight(layer)
    return weight


def lora_delta(down: torch.Tensor, up: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """up @ down in the layer's weight shape (Linear, or Conv2d with a 1x1 up factor)."""
    return (up.flatten(1) @ down.flatten(1)).reshape(shape)


def use_input_axis(module: torch.nn.Module, adapter_name: str) -> None:
    """Replace peft's per-row DoRA magnitude in every DoRA layer of `module` by a per-column one.

    The magnitudes start at the column norms of W + s·ΔW, so the fresh adapter changes nothing, as
    peft's per-row start does.
    """
    import torch
    from peft.tuners.lora import LoraLayer

    layer_class = _input_dora_class()
    with torch.no_grad():
        for name, layer in module.named_modules():
            if not isinstance(layer, LoraLayer) or adapter_name not in layer.lora_magnitude_vector:
                continue
            base = layer.get_base_layer()
            if getattr(base, "groups", 1) != 1:
                raise UserError(f"DoRA per input column does not support grouped convolutions ({name})")
            lora_A, lora_B = layer.lora_A[adapter_name].weight, layer.lora_B[adapter_name].weight
            weight = base_weight(base).float()
            combined = weight + layer.scaling[adapter_name] * lora_delta(lora_A.float(), lora_B.float(), weight.shape)
            magnitude = column_norm(combined).to(device=lora_A.device, dtype=lora_A.dtype)
            layer.lora_magnitude_vector[adapter_name] = layer_class(magnitude)
