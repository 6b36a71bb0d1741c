"""LoRA and LyCORIS files: layout, base model, ranks, alphas, and the modules they touch.

Ranks come from tensor shapes. Alphas are the file's own 0-dim `.alpha` tensors where it has them
(kohya, LyCORIS, ComfyUI layouts; read one by one, a few bytes each); a diffusers/PEFT file keeps
them in its `lora_adapter_metadata` header, and without that loaders use alpha = rank.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from onetrainer.inspection.metadata import group_metadata
from onetrainer.inspection.models import family_name
from onetrainer.inspection.result import Inspection, count_text, human_count
from onetrainer.inspection.tensors import TensorIndex, parameter_count
from onetrainer.util.detect import Detection
from onetrainer.util.keymaps.engine import KeyMapError
from onetrainer.util.keymaps.lora import module_rank, split_peft_key
from onetrainer.util.keymaps.lora_peft import DIFFUSERS_METADATA_KEY

KOHYA_COMPONENTS = (
    ("lora_unet_", "unet"),
    ("lora_te1_", "text_encoder"),
    ("lora_te2_", "text_encoder_2"),
    ("lora_te3_", "text_encoder_3"),
    ("lora_te_", "text_encoder"),
)
LEGACY_PARAMS = {
    "lora.down.weight": "lora_A.weight",
    "lora.up.weight": "lora_B.weight",
    "lora_linear_layer.down.weight": "lora_A.weight",
    "lora_linear_layer.up.weight": "lora_B.weight",
    "lora_magnitude_vector.weight": "lora_magnitude_vector",
}
"""Other names diffusers files give PEFT parameters: the attention-processor LoRA names
(`convert_state_dict_to_diffusers` still writes them) and a text encoder's DoRA magnitude as
transformers loads it (`keymaps.lora_peft.TEXT_ENCODER_MAGNITUDE`)."""
PEFT_COMPONENTS = ("unet", "text_encoder", "text_encoder_2", "transformer", "diffusion_model")


def lora_format(detection: Detection) -> str:
    """The layout name users search for: kohya, peft, peft-bare, comfy, lycoris-loha, lycoris-lokr."""
    if detection.adapter in ("loha", "lokr"):
        return f"lycoris-{detection.adapter}"
    return detection.layout


def _split(key: str, kohya: bool) -> tuple[str, str]:
    """(module, parameter) in kohya or PEFT parameter names (diffusers' older names mapped to PEFT's)."""
    if kohya:
        module, _, param = key.partition(".")
        return module, param
    for legacy, peft in LEGACY_PARAMS.items():
        if key.endswith("." + legacy):
            return key[: -len(legacy) - 1], peft
    try:
        return split_peft_key(key)
    except KeyMapError:
        module, _, param = key.rpartition(".")
        return module, param


def _component(module: str, kohya: bool) -> str:
    if kohya:
        return next((name for prefix, name in KOHYA_COMPONENTS if module.startswith(prefix)), "other")
    head = module.partition(".")[0]
    return head if head in PEFT_COMPONENTS else "model"


def _target(module: str, kohya: bool) -> str:
    """The layer kind, named from the last block index on: `attn1_to_q`, `self_attn_q_proj`, `proj_in`."""
    if kohya:
        prefix = next((prefix for prefix, _ in KOHYA_COMPONENTS if module.startswith(prefix)), "")
        rest = module.removeprefix(prefix)
    else:
        head, _, tail = module.partition(".")
        rest = tail if head in PEFT_COMPONENTS and tail else module
    tokens = re.split(r"[._]", rest)
    while len(tokens) > 1 and tokens[-1].isdigit():
        tokens.pop()
    last_index = max((i for i, token in enumerate(tokens) if token.isdigit()), default=-1)
    return "_".join(tokens[last_index + 1 :])


def _peft_alphas(metadata: dict[str, str], modules: list[str]) -> dict[str, float]:
    raw = metadata.get(DIFFUSERS_METADATA_KEY)
    if not raw:
        return {}
    try:
        packed = json.loads(raw)
    except json.JSONDecodeError:
        return {}
    alphas: dict[str, float] = {}
    for module in modules:
        component, _, path = module.partition(".")
        default = packed.get(f"{component}.lora_alpha")
        alpha = packed.get(f"{component}.alpha_pattern", {}).get(path, default)
        if alpha is not None:
            alphas[module] = float(alpha)
    return alphas


def inspect_lora(path: Path, index: TensorIndex, detection: Detection) -> Inspection:
    fmt = lora_format(detection)
    kohya = fmt in ("kohya", "lycoris-loha", "lycoris-lokr")
    modules: dict[str, dict[str, Any]] = {}
    for key, (_, shape) in index.entries.items():
        module, param = _split(key, kohya)
        modules.setdefault(module, {})[param] = SimpleNamespace(shape=shape)
    names = sorted(modules)
    ranks = {name: module_rank(modules[name]) for name in names}
    alpha_keys = {name: f"{name}.alpha" for name in names if "alpha" in modules[name]}
    if alpha_keys:
        values = index.scalars(alpha_keys.values())
        alphas = {name: values[key] for name, key in alpha_keys.items()}
        alpha_note = "from the file's .alpha tensors"
    else:
        alphas = _peft_alphas(index.metadata, names)
        alpha_note = f"from {DIFFUSERS_METADATA_KEY}" if alphas else "not stored: loaders use alpha = rank"
    per_component = Counter(_component(name, kohya) for name in names)
    total = parameter_count(shape for _, shape in index.entries.values() if len(shape) > 0)
    rank_values = [rank if rank is not None else "full" for rank in ranks.values()]
    details: dict[str, Any] = {
        "adapter": detection.adapter,
        "base_detected_by": detection.reason,
        "rank": _most_common(rank_values),
        "ranks": _counts(rank_values),
        "alpha": _most_common([_number(value) for value in alphas.values()]),
        "alphas": _counts([_number(value) for value in alphas.values()]),
        "alpha_source": alpha_note,
        "modules": len(names),
        "parameters": total,
        "components": dict(sorted(per_component.items())),
        "targets": dict(Counter(_target(name, kohya) for name in names).most_common()),
        "module_names": names,
        "metadata": group_metadata(index.metadata),
    }
    rank_text = count_text(rank_values) if rank_values else "?"
    summary = (
        f"{family_name(detection.family)} {detection.adapter or 'LoRA'}, {fmt} layout, rank {rank_text}, "
        f"{len(names)} modules, {human_count(total)} parameters"
    )
    return Inspection("lora", fmt, detection.family, path, summary, details, json_only=frozenset({"module_names"}))


def _most_common(values: list[Any]) -> Any:
    return Counter(values).most_common(1)[0][0] if values else None


def _counts(values: list[Any]) -> dict[str, int]:
    """{"4": 30, "8": 2}: every distinct value with how many modules have it, most common first."""
    return {str(value): count for value, count in Counter(values).most_common()}


def _number(value: float) -> int | float:
    return int(value) if float(value).is_integer() else round(value, 6)
