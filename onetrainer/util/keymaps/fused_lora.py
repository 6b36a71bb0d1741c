"""Adapters of a layer that an original checkpoint fuses from several diffusers layers, split on read.

Some original layouts join diffusers layers along the output rows (attention q, k, v in one `qkv`
layer). A kohya file over such names holds one adapter per fused layer; reading it gives each diffusers
part its own adapter:
- a LoRA (or LoHa) merged from per-part adapters (rank n*r, up block diagonal) splits back exactly:
  part i gets down rows i*r..(i+1)*r, its up block and alpha a'/n; a part whose down block is all zero
  is absent;
- one trained on the fused layer itself gives each part the whole down matrix, its own row slice of up,
  the same rank and alpha: the same scale, the same weights.
A LoKr (a Kronecker product has no such row split) or a DoRA (its weight norm spans the fused rows) has no
per-part factors; it is refused here. Only for sampling, which merges deltas into the weights, is it read
whole (`take_whole`): ComfyUI applies it to the fused weight, and so does `lora_merge`, to the parts' weights
joined (`FusedAdapter`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from onetrainer.util.keymaps.engine import KeyMapError

if TYPE_CHECKING:
    import torch

    Modules = dict[str, dict[str, torch.Tensor]]

LORA_PARAMS = ("lora_A.weight", "lora_B.weight")
LOHA_PARAMS = ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b")
ROW_MAGNITUDE = "lora_magnitude_vector"
COLUMN_MAGNITUDE = "lora_magnitude_vector.input_magnitude"


@dataclass(frozen=True)
class FusedLayer:
    """One original layer made of several diffusers layers joined along the output rows."""

    parts: tuple[str, ...]
    """The diffusers module paths, in row order."""
    target: str
    """The original module path."""
    ratios: tuple[int, ...] | None = None
    """The parts' row counts in proportion (None: equal)."""


@dataclass(frozen=True)
class FusedAdapter:
    """An adapter on an original layer that is several diffusers layers, with no per-part factors (a LoKr, a
    DoRA; a LoKr on a layer whose halves swap): its delta is built on the parts' weights joined along the rows."""

    parts: tuple[str, ...]
    """The component-prefixed diffusers modules, in row order."""
    ratios: tuple[int, ...] | None
    """The parts' row counts in proportion (None: equal)."""
    params: dict[str, torch.Tensor]
    """Its tensors in neutral names (`lokr_w1`, `lora_A.weight` with `lora_magnitude_vector`, ...)."""
    alpha: float
    swapped: bool = False
    """Whether the original layer holds the joined rows with their halves swapped."""

    @property
    def module(self) -> str:
        return " + ".join(self.parts)


def group_modules(tensors: Mapping[str, torch.Tensor]) -> Modules:
    """Neutral-form tensors grouped by module: {module: {param: tensor}}."""
    from onetrainer.util.keymaps.lora import split_peft_key

    modules: Modules = {}
    for key, tensor in tensors.items():
        module, param = split_peft_key(key)
        modules.setdefault(module, {})[param] = tensor
    return modules


def flatten_modules(modules: Modules) -> dict[str, torch.Tensor]:
    """The inverse of `group_modules`."""
    return {f"{module}.{param}": tensor for module, params in modules.items() for param, tensor in params.items()}


def swap_halves(tensor: torch.Tensor) -> torch.Tensor:
    import torch

    first, second = tensor.chunk(2, dim=0)
    return torch.cat([second, first])


def swap_rows(params: dict[str, torch.Tensor], module: str) -> dict[str, torch.Tensor]:
    """The adapter of a layer whose output rows swap halves (its own inverse)."""
    if any(param.startswith("lokr_") for param in params):
        raise KeyMapError(f"{module}: a LoKr cannot swap the halves of its output rows", hint="Save it as peft.")
    row_factors = {"lora_B.weight", "hada_w1_a", "hada_w2_a", ROW_MAGNITUDE}
    return {param: swap_halves(tensor) if param in row_factors else tensor for param, tensor in params.items()}


def adapter_kind(params: Mapping[str, torch.Tensor], module: str) -> str:
    """ "lora" or "loha", the adapters that split into the parts of a fused layer; others are refused."""
    if all(param in params for param in LORA_PARAMS) and len(params) == 2:
        return "lora"
    if all(param in params for param in LOHA_PARAMS) and len(params) == 4:
        return "loha"
    if any(param.startswith("lokr_") for param in params):
        what = "a LoKr"
    elif any("magnitude" in param for param in params):
        what = "a DoRA"
    else:
        what = "this adapter"
    raise KeyMapError(
        f"{module}: {what} on a layer that the original checkpoint fuses with others (q, k, v) has no exact form "
        "in its kohya names",
        hint="Save it as peft (diffusers keys; ComfyUI loads a LoRA from them but ignores a DoRA's magnitudes), or "
        "leave the fused attention layers out of the targets (lora.regex).",
    )


def splits_by_rows(params: Mapping[str, torch.Tensor]) -> bool:
    """Whether a fused layer's adapter has per-part factors (a LoRA or LoHa without magnitudes)."""
    return set(params) in (set(LORA_PARAMS), set(LOHA_PARAMS))


def take_whole(
    tensors: Mapping[str, torch.Tensor],
    alphas: Mapping[str, float],
    component: str,
    fused: Mapping[str, FusedLayer],
    swapped: Mapping[str, str],
) -> tuple[dict[str, torch.Tensor], dict[str, float], list[FusedAdapter]]:
    """For sampling: the adapters of `component`'s fused layers (`fused`: original path -> layer) that have no
    per-part factors, and its LoKr adapters on layers whose halves swap (`swapped`: original path -> diffusers
    path), taken out whole; the rest of the neutral-form (tensors, alphas) as it was."""
    rest: Modules = {}
    rest_alphas: dict[str, float] = {}
    whole: list[FusedAdapter] = []
    for module, params in group_modules(tensors).items():
        prefix, _, path = module.partition(".")
        layer = fused.get(path) if prefix == component else None
        if layer is not None and layer.target == path and not splits_by_rows(params):
            parts = tuple(f"{component}.{part}" for part in layer.parts)
            whole.append(FusedAdapter(parts, layer.ratios, params, alphas[module]))
        elif prefix == component and path in swapped and any(param.startswith("lokr_") for param in params):
            whole.append(FusedAdapter((f"{component}.{swapped[path]}",), None, params, alphas[module], swapped=True))
        else:
            rest[module], rest_alphas[module] = params, alphas[module]
    return flatten_modules(rest), rest_alphas, whole


def adapter_rank(params: Mapping[str, torch.Tensor]) -> int:
    down = params.get("lora_A.weight", params.get("hada_w1_b"))
    assert down is not None
    return int(down.shape[0])


def split_fused(
    layer: FusedLayer, params: dict[str, torch.Tensor], alpha: float, module: str
) -> dict[str, tuple[dict[str, torch.Tensor], float]]:
    """A fused layer's LoRA / LoHa (`module` names it in errors) -> {diffusers part: (params, alpha)}."""
    kind = adapter_kind(params, module)
    n = len(layer.parts)
    ratios = layer.ratios or (1,) * n
    up_names, down_names = (
        (("lora_B.weight",), ("lora_A.weight",)) if kind == "lora" else (LOHA_PARAMS[0::2], LOHA_PARAMS[1::2])
    )
    rows = int(params[up_names[0]].shape[0])
    if rows % sum(ratios):
        raise KeyMapError(f"{module}: {rows} output rows do not split {ratios}")
    unit = rows // sum(ratios)
    bounds = [sum(ratios[:i]) * unit for i in range(n + 1)]
    rank = int(params[down_names[0]].shape[0])
    block = rank // n
    sparse = rank % n == 0 and all(
        _zero_outside(params[up][bounds[i] : bounds[i + 1]], i * block, (i + 1) * block)
        for up in up_names
        for i in range(n)
    )
    split: dict[str, tuple[dict[str, torch.Tensor], float]] = {}
    for i, part in enumerate(layer.parts):
        rows_i = slice(bounds[i], bounds[i + 1])
        if sparse:
            cols = slice(i * block, (i + 1) * block)
            downs = {down: params[down][cols] for down in down_names}
            if all(not bool(tensor.any()) for tensor in downs.values()):
                continue
            ups = {up: params[up][rows_i, cols] for up in up_names}
            split[part] = ({**downs, **ups}, alpha / n)
        else:
            downs = {down: params[down].clone() for down in down_names}
            ups = {up: params[up][rows_i] for up in up_names}
            split[part] = ({**downs, **ups}, alpha)
    return {part: ({k: v.contiguous() for k, v in p.items()}, a) for part, (p, a) in split.items()}


def _zero_outside(up: torch.Tensor, start: int, stop: int) -> bool:
    return not bool(up[:, :start].any()) and not bool(up[:, stop:].any())
