"""Bridges between live PEFT-adapted models and the neutral (tensors, alphas) LoRA form of `lora.py`.

PEFT keeps alpha and rank in its layers and config, not in the state dict, so going from a model to
a file (kohya or diffusers) and from a file back to a PEFT config needs these few helpers.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Collection, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

from onetrainer.util.keymaps.engine import KeyMapError
from onetrainer.util.keymaps.lora import INPUT_MAGNITUDE, module_rank, split_peft_key

if TYPE_CHECKING:
    import torch

V = TypeVar("V")

DIFFUSERS_METADATA_KEY = "lora_adapter_metadata"
"""Safetensors metadata key where diffusers keeps each component's LoraConfig as JSON."""
TEXT_ENCODER_MAGNITUDE = "lora_magnitude_vector.weight"
"""How a diffusers file must name a text encoder's DoRA magnitude for `load_lora_weights` to load it.

diffusers hands text encoders to transformers' `load_adapter`, which (transformers 5) maps
`lora_magnitude_vector.weight` onto the layer and drops peft's bare `lora_magnitude_vector`, so the
text encoder would silently lose its magnitudes; the UNet goes through peft, which takes the bare name.
"""


def peft_adapter_state(
    model: torch.nn.Module, component: str, adapter_name: str = "default"
) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """Collect one component's adapter as (`component.`-prefixed tensors, kohya-semantics alphas).

    alpha = scale x rank reproduces PEFT's scale under kohya's alpha / rank (also for rsLoRA). A LoKr
    module of two full factors is never scaled by kohya loaders, so PEFT's scale is baked into
    `lokr_w1` there.
    """
    from peft import get_peft_model_state_dict
    from peft.tuners.tuners_utils import BaseTunerLayer

    state = get_peft_model_state_dict(model, adapter_name=adapter_name)
    tensors = {f"{component}.{key}": tensor for key, tensor in state.items()}
    params: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in tensors.items():
        module, param = split_peft_key(key)
        params.setdefault(module, {})[param] = tensor
    alphas: dict[str, float] = {}
    for name, layer in model.named_modules():
        module = f"{component}.{name}"
        if not isinstance(layer, BaseTunerLayer) or module not in params:
            continue
        scale, rank = float(layer.scaling[adapter_name]), layer.r[adapter_name]
        declared = {**getattr(layer, "alpha", {}), **getattr(layer, "lora_alpha", {})}.get(adapter_name)
        # alpha = scale x rank; keep the declared alpha where it gives that scale, to avoid rounding.
        alpha = float(declared) if declared is not None and declared / rank == scale else scale * rank
        if module_rank(params[module]) is None:
            tensors[f"{module}.lokr_w1"] = tensors[f"{module}.lokr_w1"] * scale
            alpha = float(rank)
        alphas[module] = alpha
    return tensors, alphas


def peft_lora_config_kwargs(
    sd: Mapping[str, torch.Tensor], alphas: Mapping[str, float], component: str
) -> dict[str, Any]:
    """`LoraConfig` keyword arguments that recreate one component's LoRA (ranks, alphas, DoRA).

    The most common rank and alpha become `r` / `lora_alpha`; other modules go into the patterns,
    keyed by full module path, so `inject_adapter_in_model(LoraConfig(**kwargs), model)` rebuilds
    exactly the saved modules.
    """
    modules: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in sd.items():
        module, param = split_peft_key(key)
        if module.startswith(component + "."):
            modules.setdefault(module.removeprefix(component + "."), {})[param] = tensor
    if not modules:
        raise KeyMapError(f"no {component} modules in this LoRA")
    if any(INPUT_MAGNITUDE in params for params in modules.values()):
        raise KeyMapError(
            "this DoRA keeps a magnitude per input column (the kohya layout), which peft's DoRA cannot express",
            hint="Save it as kohya, the layout A1111/Forge and ComfyUI compute it from; for diffusers, train "
            "with saving.format: peft.",
        )
    if any(not p.startswith(("lora_A", "lora_B", "lora_magnitude")) for ps in modules.values() for p in ps):
        raise KeyMapError("only LoRA/DoRA adapters map onto a LoraConfig", hint="LoHa/LoKr need LoHaConfig/LoKrConfig")
    ranks = {path: int(module_rank(params) or 0) for path, params in modules.items()}
    alpha_of = {path: float(alphas.get(f"{component}.{path}", ranks[path])) for path in modules}
    r = Counter(ranks.values()).most_common(1)[0][0]
    alpha = Counter(alpha_of.values()).most_common(1)[0][0]
    return {
        "r": r,
        "lora_alpha": alpha,
        "rank_pattern": {path: rank for path, rank in ranks.items() if rank != r},
        "alpha_pattern": {path: a for path, a in alpha_of.items() if a != alpha},
        "target_modules": sorted(modules),
        "use_dora": any("lora_magnitude_vector" in params for params in modules.values()),
    }


def diffusers_lora_metadata(sd: Mapping[str, torch.Tensor], alphas: Mapping[str, float]) -> dict[str, str]:
    """Safetensors metadata that lets `load_lora_weights` apply our alphas to a diffusers-layout file.

    Without it diffusers assumes alpha = rank, so any LoRA trained with another alpha would load at
    the wrong strength.
    """
    components = sorted({split_peft_key(key)[0].partition(".")[0] for key in sd})
    packed = {
        f"{component}.{name}": value
        for component in components
        for name, value in peft_lora_config_kwargs(sd, alphas, component).items()
    }
    return {DIFFUSERS_METADATA_KEY: json.dumps(packed, indent=2, sort_keys=True)}


CLIP_FLAT_CHILDREN = ("encoder.layers.", "embeddings.", "final_layer_norm.")
"""How a CLIP text model's layer paths start where transformers (>= 5.6) dropped its `text_model.` level; a T5
encoder's never do (`encoder.block.`, `encoder.final_layer_norm.`)."""


def with_clip_text_model(sd: Mapping[str, V], text_encoders: Collection[str]) -> dict[str, V]:
    """The `text_encoders`' CLIP layers under `text_model.`, whatever the installed transformers calls them: the
    only form ComfyUI maps (`text_encoder.text_model.encoder.layers.N`) and the one diffusers' other versions
    and peers' files use (`lora_file.matched_to` reads either form back)."""
    out: dict[str, V] = {}
    for key, value in sd.items():
        component, _, path = key.partition(".")
        wrap = component in text_encoders and path.startswith(CLIP_FLAT_CHILDREN)
        out[f"{component}.text_model.{path}" if wrap else key] = value
    return out


def to_diffusers_keys(sd: Mapping[str, torch.Tensor], text_encoders: Collection[str]) -> dict[str, torch.Tensor]:
    """The neutral form's keys as a diffusers LoRA file needs them (`TEXT_ENCODER_MAGNITUDE` on the
    `text_encoders` components)."""
    out: dict[str, torch.Tensor] = {}
    for key, tensor in sd.items():
        module, param = split_peft_key(key)
        if param == "lora_magnitude_vector" and module.partition(".")[0] in text_encoders:
            key = f"{module}.{TEXT_ENCODER_MAGNITUDE}"
        out[key] = tensor
    return out


def from_diffusers_keys(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A diffusers LoRA file's keys in the neutral form: magnitudes under either name become peft's."""
    suffix = "." + TEXT_ENCODER_MAGNITUDE
    return {key[: -len(".weight")] if key.endswith(suffix) else key: tensor for key, tensor in sd.items()}
