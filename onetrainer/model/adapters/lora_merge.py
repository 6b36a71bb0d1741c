"""Apply LoRA files to a model for inference by adding their weight deltas, each at its own strength.

For sampling with finished LoRAs, merging is simpler and faster than keeping adapter layers: any
number of files stack by addition, every LyCORIS factorisation works (not only the ones peft can
rebuild), and the model runs at its normal speed. Training never merges; it keeps peft layers.

Deltas follow the kohya / LyCORIS conventions that A1111 and ComfyUI apply:
LoRA `up @ down`, LoHa `(w1a @ w1b) * (w2a @ w2b)`, LoKr `kron(w1, w2)`, each times alpha / rank
(LoKr of two full factors unscaled), and DoRA re-normalised to its magnitudes, per output row or per
input column as the file says (`dora`), with the strength interpolating between the original and the
DoRA weight. An adapter on a layer the original checkpoint fuses from several of ours, with no per-part
factors (`LoraFile.fused`: a LoKr or DoRA on a fused `qkv`), is applied as ComfyUI applies it: to the parts'
weights joined along the rows (a DoRA normalising the joined weight), each part then taking its rows back.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from onetrainer.model.adapters.dora import INPUT, OUTPUT, dora_weight
from onetrainer.model.adapters.lora_file import LoraFile, check_lora_fits, matched_to
from onetrainer.util.errors import UserError

if TYPE_CHECKING:
    import torch

    from onetrainer.model.diffusion import DiffusionModel
    from onetrainer.util.keymaps.fused_lora import FusedAdapter


def module_delta(params: dict[str, torch.Tensor], shape: torch.Size, alpha: float | None) -> torch.Tensor:
    """The float32 weight delta of one adapted layer (before the strength multiplier)."""
    import torch

    from onetrainer.util.keymaps.lora import module_rank

    p = {name: tensor.float() for name, tensor in params.items()}
    if "hada_t1" in p or "lokr_t2" in p:
        raise UserError("Tucker-decomposed LoHa/LoKr layers (hada_t1 / lokr_t2) are not supported")
    if "lora_A.weight" in p:
        delta = p["lora_B.weight"].flatten(1) @ p["lora_A.weight"].flatten(1)
    elif "hada_w1_a" in p:
        delta = (p["hada_w1_a"] @ p["hada_w1_b"]) * (p["hada_w2_a"] @ p["hada_w2_b"])
    elif "lokr_w1" in p or "lokr_w1_a" in p:
        w1 = p["lokr_w1"] if "lokr_w1" in p else p["lokr_w1_a"] @ p["lokr_w1_b"]
        w2 = p["lokr_w2"] if "lokr_w2" in p else p["lokr_w2_a"] @ p["lokr_w2_b"]
        if w2.ndim == 4:
            w1 = w1[:, :, None, None]
        delta = torch.kron(w1, w2)
    else:
        raise UserError(f"unknown adapter tensors: {', '.join(sorted(p))}")
    if delta.numel() != shape.numel():
        raise UserError(f"the adapter's delta has {delta.numel()} values but the layer has {shape.numel()}")
    rank = module_rank(params)
    scale = 1.0 if rank is None or alpha is None else alpha / rank
    return delta.reshape(shape) * scale


def merge_lora(model: DiffusionModel, lora: LoraFile, strength: float = 1.0) -> int:
    """Add `strength` times the file's deltas to the model's weights in place; returns the layer count."""
    import torch

    from onetrainer.util.keymaps.lora import split_peft_key

    tensors, alphas = matched_to(model, lora.tensors, lora.alphas)
    lora = dataclasses.replace(lora, tensors=tensors, alphas=alphas)
    check_lora_fits(model, lora)
    grouped: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in lora.tensors.items():
        module, param = split_peft_key(key)
        grouped.setdefault(module, {})[param] = tensor
    with torch.no_grad():
        for module, params in grouped.items():
            component, _, path = module.partition(".")
            weight = model.components[component].get_submodule(path).weight
            weight.copy_(_merged(weight.float(), params, lora.alphas.get(module), strength).to(weight.dtype))
        for adapter in lora.fused:
            _merge_fused(model, adapter, strength)
    return len(grouped) + len(lora.fused)


def _merged(
    original: torch.Tensor, params: dict[str, torch.Tensor], alpha: float | None, strength: float
) -> torch.Tensor:
    """The float32 weight `original` becomes with one layer's adapter merged at `strength`."""
    from onetrainer.util.keymaps.lora import INPUT_MAGNITUDE

    params = dict(params)
    row, column = params.pop("lora_magnitude_vector", None), params.pop(INPUT_MAGNITUDE, None)
    delta = module_delta(params, original.shape, alpha).to(original.device)
    magnitude, axis = (row, OUTPUT) if row is not None else (column, INPUT)
    if magnitude is None:
        return original + strength * delta
    dora = dora_weight(original, delta, magnitude.to(original.device), axis)
    return original + strength * (dora - original)


def _merge_fused(model: DiffusionModel, adapter: FusedAdapter, strength: float) -> None:
    """Merge a fused layer's adapter into its parts' weights joined along the rows, in the original layer's row
    order (halves swapped where it swaps them), then give each part its rows back."""
    import torch

    from onetrainer.util.keymaps.fused_lora import swap_halves

    weights = [_weight(model, part) for part in adapter.parts]
    joined = torch.cat([weight.float() for weight in weights])
    order = swap_halves if adapter.swapped else (lambda tensor: tensor)
    merged = order(_merged(order(joined), adapter.params, adapter.alpha, strength))
    for weight, rows in zip(weights, merged.split([weight.shape[0] for weight in weights]), strict=True):
        weight.copy_(rows.to(weight.dtype))


def _weight(model: DiffusionModel, module: str) -> torch.Tensor:
    import torch

    component, _, path = module.partition(".")
    try:
        weight = model.components[component].get_submodule(path).weight
    except (KeyError, AttributeError):
        raise UserError(f"this LoRA adapts {module}, which this {model.spec.title} model does not have") from None
    assert isinstance(weight, torch.Tensor)
    return weight
