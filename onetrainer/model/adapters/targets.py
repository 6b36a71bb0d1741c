"""Which layers of a component receive adapters: presets of name patterns, or the user's regex.

Layers are chosen by their module paths only, never by their Python type, so whatever layer class
peft can adapt (plain, or a quantised bitsandbytes / torchao layer) carries an adapter. The presets
are tables of patterns per kind of network (`UNET_PRESETS`, `CLIP_PRESETS`, ...); a family names the
table of each of its components in its spec. The chosen layers are returned as full module paths:
peft then adapts exactly those, and a regex that matches nothing is caught here instead of
producing an adapter with no layers.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import TYPE_CHECKING

from onetrainer.util.errors import UserError
from onetrainer.util.family import OneTrainerLayerPreset

if TYPE_CHECKING:
    import torch

PRESET_ORDER = ("attn", "attn-mlp", "full")

UNET_PRESETS: dict[str, tuple[str, ...]] = {
    "attn": (r"\.attn[12]\.(to_q|to_k|to_v|to_out\.0)$",),
    "attn-mlp": (r"\.ff\.net\.(0\.proj|2)$", r"\.attentions\.\d+\.proj_(in|out)$"),
    "full": (
        r"\.resnets\.\d+\.(conv1|conv2|conv_shortcut|time_emb_proj)$",
        r"\.(downsamplers|upsamplers)\.0\.conv$",
    ),
}
"""diffusers' UNet2DConditionModel: the kohya / LoCon layer sets."""
UNET_ONETRAINER_PRESETS = {
    "attn-mlp": OneTrainerLayerPreset("attentions", same_as="attn-mlp"),
    "attn-only": OneTrainerLayerPreset("attn", same_as="attn"),
}
"""OneTrainer's layer-filter presets of its UNet model types (every layer of the transformer blocks, and their
attention layers), which select the layers of ours."""

CLIP_PRESETS: dict[str, tuple[str, ...]] = {
    "attn": (r"\.self_attn\.(q_proj|k_proj|v_proj|out_proj)$",),
    "attn-mlp": (r"\.mlp\.(fc1|fc2)$",),
    "full": (),
}
"""transformers' CLIP text models."""

T5_PRESETS: dict[str, tuple[str, ...]] = {
    "attn": (r"\.SelfAttention\.(q|k|v|o)$",),
    "attn-mlp": (r"\.DenseReluDense\.(wi_0|wi_1|wo)$",),
    "full": (),
}
"""transformers' T5 encoder."""


def _weighted_leaves(module: torch.nn.Module) -> list[str]:
    """Paths of the leaf layers that hold a weight: what an adapter can wrap, whatever their class."""
    return [
        name
        for name, child in module.named_modules()
        if name and not any(True for _ in child.children()) and getattr(child, "weight", None) is not None
    ]


def target_modules(
    module: torch.nn.Module,
    component: str,
    presets: Mapping[str, tuple[str, ...]],
    preset: str,
    regex: str | None = None,
    unused: frozenset[str] = frozenset(),
) -> list[str]:
    """Module paths (relative to `module`) the preset or regex selects.

    A regex replaces the preset and is matched with `re.search` against the module path. A preset leaves
    out the `unused` layers (whose output the model discards: an adapter there would never train).
    """
    if preset not in PRESET_ORDER:
        raise UserError(f"unknown LoRA target preset {preset!r}", hint=f"Use one of: {', '.join(PRESET_ORDER)}.")
    names = _weighted_leaves(module)
    if regex is not None:
        compiled = re.compile(regex)
        chosen = [name for name in names if compiled.search(name)]
        if not chosen:
            raise UserError(
                f"the LoRA regex {regex!r} matches no layer of the {component}",
                where="lora.regex",
                hint=f"Layer paths look like: {', '.join(names[:3])}.",
            )
        return chosen
    patterns = [
        re.compile(pattern)
        for level in PRESET_ORDER[: PRESET_ORDER.index(preset) + 1]
        for pattern in presets.get(level, ())
    ]
    return [name for name in names if name not in unused and any(pattern.search("." + name) for pattern in patterns)]
