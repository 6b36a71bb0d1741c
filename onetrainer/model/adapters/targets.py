"""Which layers of a denoiser or text encoder receive adapters.

The presets name layers by their diffusers / transformers module paths, which are the same in every
UNet family (SD 1.x, 2.x, XL) and every CLIP text encoder, so one table serves them all. The chosen
layers are returned as full module paths: peft then adapts exactly those, and a regex that matches
nothing is caught here instead of producing an adapter with no layers.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from onetrainer.util.errors import UserError

if TYPE_CHECKING:
    import torch

UNET_PATTERNS: dict[str, tuple[str, ...]] = {
    "attn": (r"\.attn[12]\.(to_q|to_k|to_v|to_out\.0)$",),
    "attn-mlp": (r"\.ff\.net\.(0\.proj|2)$", r"\.attentions\.\d+\.proj_(in|out)$"),
    "full": (
        r"\.resnets\.\d+\.(conv1|conv2|conv_shortcut|time_emb_proj)$",
        r"\.(downsamplers|upsamplers)\.0\.conv$",
    ),
}
"""Each preset adds its patterns to those of the presets before it (the kohya / LoCon layer sets)."""

TEXT_ENCODER_PATTERNS: dict[str, tuple[str, ...]] = {
    "attn": (r"\.self_attn\.(q_proj|k_proj|v_proj|out_proj)$",),
    "attn-mlp": (r"\.mlp\.(fc1|fc2)$",),
    "full": (),
}

PRESET_ORDER = ("attn", "attn-mlp", "full")


def _adaptable(module: torch.nn.Module) -> bool:
    import torch

    return type(module) in (torch.nn.Linear, torch.nn.Conv2d)


def target_modules(module: torch.nn.Module, component: str, preset: str, regex: str | None = None) -> list[str]:
    """Module paths (relative to `module`) of the Linear/Conv2d layers the preset or regex selects.

    `component` is "unet" or a text encoder ("text_encoder", "text_encoder_2"); a regex replaces the
    preset and is matched with `re.search` against the module path.
    """
    if preset not in PRESET_ORDER:
        raise UserError(f"unknown LoRA target preset {preset!r}", hint=f"Use one of: {', '.join(PRESET_ORDER)}.")
    names = [name for name, child in module.named_modules() if name and _adaptable(child)]
    if regex is not None:
        compiled = re.compile(regex)
        chosen = [name for name in names if compiled.search(name)]
        if not chosen:
            raise UserError(
                f"lora.regex {regex!r} matches no Linear or Conv2d layer of the {component}",
                where="lora.regex",
                hint=f"Layer paths look like: {', '.join(names[:3])}.",
            )
        return chosen
    table = UNET_PATTERNS if component == "unet" else TEXT_ENCODER_PATTERNS
    patterns = [
        re.compile(pattern) for level in PRESET_ORDER[: PRESET_ORDER.index(preset) + 1] for pattern in table[level]
    ]
    return [name for name in names if any(pattern.search("." + name) for pattern in patterns)]
