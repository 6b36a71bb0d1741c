"""kohya LoRA names of SD 3 / 3.5: diffusers' module paths, which ComfyUI maps onto its MMDiT.

A kohya-layout SD 3 LoRA names each adapted module by its component's prefix and its diffusers /
transformers path with every "." written "_" (OneTrainer's SD 3 layout):
- `lora_transformer_` + the `SD3Transformer2DModel` path: `lora_transformer_transformer_blocks_0_attn_to_q`,
  `..._attn_add_k_proj`, `..._attn2_to_v` (3.5 Medium), `..._ff_context_net_0_proj`, `..._norm1_context_linear`;
- `lora_te1_` CLIP-L and `lora_te2_` OpenCLIP bigG, transformers' CLIP paths with `text_model_`
  (`lora_te1_text_model_encoder_layers_0_self_attn_q_proj`); `lora_te3_` T5-XXL
  (`lora_te3_encoder_block_0_layer_0_SelfAttention_q`).
The peft layout holds the same modules as `transformer.<path>.lora_A.weight`, `text_encoder.<path>...`
(diffusers' `StableDiffusion3Pipeline.load_lora_weights` reads it, for the transformer and both CLIP encoders).

ComfyUI (comfy/lora.py, `model_lora_keys_unet` and `model_lora_keys_clip`) loads both layouts:
- for an SD 3 model it builds `comfy.utils.mmdit_to_diffusers` (diffusers path -> MMDiT key) and maps
  `transformer.<path>` and `lora_transformer_<path with "_">` of every `.weight` in it: to_q / to_k / to_v
  (and add_*_proj, attn2's) to their row slices of the fused `attn.qkv` (`context_block.attn.qkv`,
  `x_block.attn2.qkv`), every other block layer one to one (`attn.to_out.0` -> `x_block.attn.proj`,
  `attn.to_add_out` -> `context_block.attn.proj`, `ff.net.0.proj` -> `x_block.mlp.fc1`, `norm1.linear` ->
  `x_block.adaLN_modulation.1`, ...), and the last block's `norm1_context.linear` with its halves swapped;
- for CLIP-L and bigG it maps `lora_te1_text_model_encoder_layers_N_<layer>` / `lora_te2_...` (self_attn
  q/k/v/out_proj, mlp fc1/fc2) and `text_encoder.` / `text_encoder_2.` + the transformers path; for T5,
  `lora_te3_` + its path (the third encoder when CLIP-L and bigG are present). Neither ComfyUI nor diffusers
  reads T5 under peft's `text_encoder_3.` keys: a LoRA that trains T5 is for ComfyUI saved as kohya.
So every LoRA target of the family's presets (`model.sd3`) has a name ComfyUI maps to a real module;
`tests/util/test_keymaps_sd3.py` checks every written key under these rules.

Read only: sd-scripts names the MMDiT's modules in Stability's original layout under `lora_unet_`
(`lora_unet_joint_blocks_0_x_block_attn_qkv`, `..._context_block_mlp_fc1`, `lora_unet_final_layer_adaLN_
modulation_1`), which ComfyUI maps with the same `mmdit_to_diffusers` table. Which diffusers layer each names
comes from the single-file table (`sd3_single_file.MmditLayout`), so LoRA names and checkpoint keys cannot
disagree: a fused `attn.qkv` is split into q, k, v (`fused_lora`), and the layers whose halves the original
layout swaps (the final modulation, the last block's text-stream modulation) have their output rows swapped.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cache
from typing import TYPE_CHECKING, Any

from onetrainer.util.keymaps.engine import SWAP_HALVES, KeyMapError
from onetrainer.util.keymaps.fused_lora import (
    FusedAdapter,
    FusedLayer,
    flatten_modules,
    group_modules,
    split_fused,
    swap_rows,
    take_whole,
)
from onetrainer.util.keymaps.kohya_names import T5_COMPOUND_NAMES, UNET_CLIP_COMPOUND_NAMES, DottedKohyaNaming
from onetrainer.util.keymaps.sd3_single_file import MmditLayout

if TYPE_CHECKING:
    import torch

    from onetrainer.util.keymaps.fused_lora import Modules

MMDIT_COMPOUND_NAMES = frozenset(
    {
        "transformer_blocks", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out", "norm1_context",
        "ff_context", "norm_q", "norm_k", "norm_added_q", "norm_added_k", "context_embedder", "pos_embed",
        "time_text_embed", "timestep_embedder", "text_embedder", "norm_out",
    }
)  # fmt: skip
"""Identifiers with "_" in diffusers' SD3Transformer2DModel (beyond the UNet / CLIP ones)."""

PREFIXES = (
    ("lora_transformer_", "transformer"),
    ("lora_te1_", "text_encoder"),
    ("lora_te2_", "text_encoder_2"),
    ("lora_te3_", "text_encoder_3"),
    ("lycoris_", "transformer"),
)
"""Read only: `lycoris_` names the transformer's diffusers paths in SimpleTuner's LyCORIS files."""
CLIP_ENCODERS = ("text_encoder", "text_encoder_2")

DIFFUSERS_NAMING = DottedKohyaNaming.of(
    PREFIXES,
    UNET_CLIP_COMPOUND_NAMES | MMDIT_COMPOUND_NAMES | T5_COMPOUND_NAMES,
    text_encoders=CLIP_ENCODERS,
    projected=CLIP_ENCODERS,
)

TRANSFORMER = "transformer"
ORIGINAL_PREFIX = "lora_unet_"
BLOCK_INDEX = re.compile(r"joint_blocks\.(\d+)\.")
TEXT_MODULATION = "context_block.adaLN_modulation.1"
"""A block's text-stream modulation: 6 chunks of the width, the last (text-only) block's 2 (shift, scale)."""


@dataclass(frozen=True)
class OriginalLayout:
    """The MMDiT's original module paths, as the single-file table of a model with `blocks` blocks maps them."""

    renamed: dict[str, str]
    """Original module path -> diffusers module path, for layers that map one to one."""
    swapped: frozenset[str]
    """Original paths whose output rows swap halves."""
    fused: dict[str, FusedLayer]
    """Original path -> the diffusers layers it joins."""
    roots: frozenset[str]
    """First path segments only original paths have (`joint_blocks`, `final_layer`, ...)."""


@cache
def original_layout(blocks: int) -> OriginalLayout:
    """Module paths from `MmditLayout.rows`: prefix rows name modules, fused and swapped rows name weights."""
    renamed: dict[str, str] = {}
    swapped: set[str] = set()
    fused: dict[str, FusedLayer] = {}
    rows = MmditLayout(blocks).rows(src="", dst="")
    for row in rows:
        if isinstance(row.source, tuple):
            if row.target.endswith(".weight"):
                target = row.target.removesuffix(".weight")
                fused[target] = FusedLayer(tuple(s.removesuffix(".weight") for s in row.source), target, row.ratios)
        elif row.source.endswith("."):
            renamed.setdefault(row.target.removesuffix("."), row.source.removesuffix("."))
        elif row.op == SWAP_HALVES and row.target.endswith(".weight"):
            target = row.target.removesuffix(".weight")
            renamed[target] = row.source.removesuffix(".weight")
            swapped.add(target)
    sources = {path.partition(".")[0] for path in renamed.values()}
    roots = {path.partition(".")[0] for path in [*renamed, *fused]} - sources
    return OriginalLayout(renamed, frozenset(swapped), fused, frozenset(roots))


def _original_compound_names() -> frozenset[str]:
    """Identifiers with "_" in the original paths (`joint_blocks`, `x_block`, `adaLN_modulation`, ...)."""
    rows = MmditLayout(1).rows(src="", dst="")
    return frozenset(word for row in rows for word in row.target.split(".") if "_" in word)


def _out_in(params: Mapping[str, torch.Tensor]) -> tuple[int, int]:
    """The (output rows, input columns) of the weight an adapter's factors change."""
    if "lora_A.weight" in params:
        return int(params["lora_B.weight"].shape[0]), int(params["lora_A.weight"].shape[1])
    if "hada_w1_a" in params:
        return int(params["hada_w1_a"].shape[0]), int(params["hada_w1_b"].shape[1])

    def factor(name: str) -> tuple[int, int]:
        if name in params:
            return int(params[name].shape[0]), int(params[name].shape[1])
        return int(params[f"{name}_a"].shape[0]), int(params[f"{name}_b"].shape[1])

    (a, b), (c, d) = factor("lokr_w1"), factor("lokr_w2")
    return a * c, b * d


def _blocks_of(modules: Modules) -> int:
    """The block count of the model an original-named file was made for, where no model says it: the block
    whose text-stream modulation has 2 chunks (not 6) is the last; without one, past every named block."""
    indices: list[int] = []
    for module, params in modules.items():
        found = BLOCK_INDEX.search(module)
        if found is None:
            continue
        indices.append(int(found.group(1)))
        rows, width = _out_in(params)
        if module.endswith(TEXT_MODULATION) and rows == 2 * width:
            return int(found.group(1)) + 1
    return max(indices, default=-1) + 2


@dataclass(frozen=True)
class Sd3KohyaNaming:
    """A `LoraNaming`: writes and reads OneTrainer's names (`DottedKohyaNaming`); reads sd-scripts' original
    MMDiT names too (`lora_unet_`), split into diffusers layers as the module docstring says.

    `blocks` (from the model, `for_model`) only says how to read original names; the names written do not
    depend on it, so it takes no part in equality (a file of any SD 3 model records no architecture)."""

    dotted: DottedKohyaNaming
    blocks: int | None = field(default=None, compare=False)

    @property
    def implementation(self) -> str:
        return self.dotted.implementation

    def for_model(self, configs: Mapping[str, Mapping[str, Any]]) -> Sd3KohyaNaming:
        blocks = configs.get(TRANSFORMER, {}).get("num_layers")
        return Sd3KohyaNaming(self.dotted, int(blocks)) if blocks is not None else self

    def to_kohya(self, module: str) -> str:
        return self.dotted.to_kohya(module)

    def from_kohya(self, name: str, *, hf_text_model: bool | None = None) -> str:
        """OneTrainer's names -> diffusers paths; sd-scripts' `lora_unet_` names -> original paths (`split`
        maps those)."""
        if name.startswith(ORIGINAL_PREFIX):
            return ORIGINAL_NAMING.from_kohya(name)
        return self.dotted.from_kohya(name, hf_text_model=hf_text_model)

    def join(
        self, tensors: Mapping[str, torch.Tensor], alphas: Mapping[str, float]
    ) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
        return self.dotted.join(tensors, alphas)

    def _layout(self, modules: Modules) -> OriginalLayout:
        return original_layout(self.blocks if self.blocks is not None else _blocks_of(modules))

    def whole_fused(
        self, tensors: Mapping[str, torch.Tensor], alphas: Mapping[str, float]
    ) -> tuple[dict[str, torch.Tensor], dict[str, float], list[FusedAdapter]]:
        """For sampling: a LoKr or DoRA on a fused `qkv`, or a LoKr on a swapped modulation, taken out whole."""
        layout = self._layout(group_modules(tensors))
        swapped = {path: layout.renamed[path] for path in layout.swapped}
        return take_whole(tensors, alphas, TRANSFORMER, layout.fused, swapped)

    def split(
        self, tensors: Mapping[str, torch.Tensor], alphas: Mapping[str, float]
    ) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
        """Original paths -> diffusers layers (fused ones split, swapped ones' rows swapped); diffusers paths
        pass through."""
        modules = group_modules(tensors)
        layout = self._layout(modules)
        out: Modules = {}
        out_alphas: dict[str, float] = {}
        for module, params in modules.items():
            component, _, path = module.partition(".")
            layer = layout.fused.get(path) if component == TRANSFORMER else None
            if layer is not None:
                for part, (part_params, alpha) in split_fused(layer, params, alphas[module], module).items():
                    out[f"{TRANSFORMER}.{part}"], out_alphas[f"{TRANSFORMER}.{part}"] = part_params, alpha
                continue
            target = layout.renamed.get(path) if component == TRANSFORMER else None
            if target is None and component == TRANSFORMER and path.partition(".")[0] in layout.roots:
                raise KeyMapError(f"{module}: not a module of this SD 3 MMDiT")
            name = module if target is None else f"{TRANSFORMER}.{target}"
            out[name] = swap_rows(params, module) if path in layout.swapped and target else params
            out_alphas[name] = alphas[module]
        return flatten_modules(out), out_alphas


ORIGINAL_NAMING = DottedKohyaNaming.of(((ORIGINAL_PREFIX, TRANSFORMER),), _original_compound_names())
"""sd-scripts' `lora_unet_` + original MMDiT path: tokenised with the original layout's identifiers."""
LORA_NAMING = Sd3KohyaNaming(DIFFUSERS_NAMING)
