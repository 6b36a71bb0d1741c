"""kohya LoRA names of FLUX.1: the BFL transformer modules, with fused q/k/v split and merged exactly.

sd-scripts trains FLUX.1 on BFL's own modules, so a kohya FLUX LoRA names them:
`lora_unet_double_blocks_0_img_attn_qkv`, `lora_unet_single_blocks_3_linear1`, `lora_unet_final_layer_linear`;
CLIP-L is `lora_te1_` + transformers' CLIP path (`text_model_` kept), T5-XXL `lora_te3_` + transformers'
T5 path (`lora_te3_encoder_block_0_layer_0_SelfAttention_q`). ComfyUI and Forge map these names to
their modules; diffusers' `load_lora_weights` converts them back to its own.

We train on diffusers' modules, where a BFL layer whose output rows fuse several projections is
several layers: `img_attn.qkv` = `attn.to_q`, `to_k`, `to_v` (the text stream's `txt_attn.qkv` =
`add_q_proj`, `add_k_proj`, `add_v_proj`), and a single block's `linear1` = `to_q`, `to_k`, `to_v`,
`proj_mlp` (rows 1:1:1:4). The rule that moves adapters between the two (the same one sd-scripts'
converter and diffusers' kohya loader apply):

- **Merge** (writing): the n parts of a fused layer, each with its own LoRA of rank r and alpha a,
  become ONE LoRA of rank n*r and alpha n*a (so the scale alpha / rank stays a / r):
  down (A) = the parts' A stacked along the rank, A = concat(A_1, ..., A_n) [n*r, in];
  up (B) = block-diagonal, B = diag(B_1, ..., B_n) [sum(out_i), n*r], so row block i of B*A is B_i*A_i
  exactly. A part without a LoRA contributes an all-zero block (zero A rows and zero B columns).
  LoHa merges the same way per Hadamard factor: `hada_w*_a` block-diagonal, `hada_w*_b` stacked.
  All adapted parts must share rank and alpha; a LoKr (a Kronecker product has no such block form)
  or a DoRA (its weight norm would span the fused rows, not each part's) on a fused layer has no
  exact BFL form and is refused, as is a LoKr on the swapped final modulation layer below. Reading one (sd-scripts
  with LyCORIS writes them) for sampling takes it whole instead (`whole_fused`), merged into the joined weights.
- **Split** (reading): a fused LoRA of rank R and alpha a' over n parts. If R = n*r and up is block
  diagonal (part i's rows are zero outside columns i*r..(i+1)*r), part i gets down rows i*r..(i+1)*r,
  its up block and alpha a'/n (exactly what the merge started from); a part whose down block is all
  zero is absent. Otherwise (a LoRA trained on the fused layer itself) each part gets the whole down
  matrix, its own row slice of up, rank R and alpha a': the same scale, the same weights.
- `norm_out.linear` holds (scale, shift) where BFL's `final_layer.adaLN_modulation.1` holds (shift,
  scale): its up rows (LoHa: the `_a` factors' rows; a DoRA's per-row magnitudes) swap halves.

Which BFL layer a diffusers layer becomes comes from the same `FluxLayout` that converts single files,
so LoRA names and checkpoint keys cannot disagree; a model's layout depends on its block counts
(`for_model`), the released models' being 19 double and 38 single blocks.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any

from onetrainer.util.keymaps.engine import KeyMapError
from onetrainer.util.keymaps.flux_single_file import IMPLEMENTATION, RELEASED, SWAPPED, FluxLayout, layout_of_config
from onetrainer.util.keymaps.fused_lora import (
    FusedAdapter,
    FusedLayer,
    adapter_kind,
    adapter_rank,
    flatten_modules,
    group_modules,
    split_fused,
    swap_rows,
    take_whole,
)
from onetrainer.util.keymaps.kohya_names import T5_COMPOUND_NAMES, UNET_CLIP_COMPOUND_NAMES, DottedKohyaNaming

if TYPE_CHECKING:
    import torch

    from onetrainer.util.keymaps.fused_lora import Modules

TRANSFORMER = "transformer"
BFL_COMPOUND_NAMES = frozenset(
    {
        "double_blocks", "single_blocks", "img_attn", "txt_attn", "img_mlp", "txt_mlp", "img_mod", "txt_mod",
        "img_in", "txt_in", "time_in", "vector_in", "guidance_in", "in_layer", "out_layer", "final_layer",
        "adaLN_modulation",
    }
)  # fmt: skip
"""Identifiers with "_" in BFL's transformer."""
PREFIXES = (("lora_unet_", TRANSFORMER), ("lora_te1_", "text_encoder"), ("lora_te3_", "text_encoder_2"))
DIFFUSERS_PREFIXES = (
    ("lora_transformer_", TRANSFORMER),
    ("lora_te1_", "text_encoder"),
    ("lora_te2_", "text_encoder_2"),
    ("lycoris_", TRANSFORMER),
)
"""OneTrainer's FLUX.1 names (read, which ComfyUI maps too): diffusers' transformer paths with "_" under
`lora_transformer_`, CLIP-L under `lora_te1_`, T5 under `lora_te2_`; SimpleTuner's LyCORIS files name the
transformer's diffusers paths under `lycoris_`."""
DIFFUSERS_COMPOUND_NAMES = frozenset(
    {
        "transformer_blocks", "single_transformer_blocks", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out",
        "norm1_context", "ff_context", "norm_q", "norm_k", "norm_added_q", "norm_added_k", "proj_mlp",
        "context_embedder", "x_embedder", "time_text_embed", "timestep_embedder", "guidance_embedder",
        "text_embedder", "norm_out",
    }
)  # fmt: skip
"""Identifiers with "_" in diffusers' FluxTransformer2DModel (beyond the UNet / CLIP ones)."""


def _block_diagonal(blocks: list[torch.Tensor]) -> torch.Tensor:
    import torch

    return torch.block_diag(*blocks)


@dataclass(frozen=True)
class FluxKohyaNaming:
    """A `LoraNaming`: BFL module names for the transformer (joined and split as the module docstring
    says), transformers' paths for CLIP-L (`lora_te1_`) and T5 (`lora_te3_`)."""

    layout: FluxLayout = RELEASED
    implementation: str = IMPLEMENTATION
    dotted: DottedKohyaNaming = field(
        default_factory=lambda: DottedKohyaNaming.of(
            PREFIXES,
            UNET_CLIP_COMPOUND_NAMES | BFL_COMPOUND_NAMES | T5_COMPOUND_NAMES,
            text_encoders=("text_encoder",),
        )
    )
    diffusers_named: DottedKohyaNaming = field(
        default_factory=lambda: DottedKohyaNaming.of(
            DIFFUSERS_PREFIXES,
            UNET_CLIP_COMPOUND_NAMES | DIFFUSERS_COMPOUND_NAMES | T5_COMPOUND_NAMES,
            text_encoders=("text_encoder",),
        )
    )
    """Reads OneTrainer's names (`DIFFUSERS_PREFIXES`); `split` passes the diffusers layers they name through."""

    @cached_property
    def _renamed(self) -> dict[str, str]:
        """diffusers module path -> BFL module path, for the layers that map one to one."""
        rows = [(a, b) for a, b in self.layout.renamed() if a.endswith(".")]
        renamed = {a.removesuffix("."): b.removesuffix(".") for a, b in rows}
        renamed.update(dict(SWAPPED))
        return renamed

    @cached_property
    def _fused(self) -> dict[str, FusedLayer]:
        """BFL module path -> its fused layer; also diffusers part path -> the layer it joins."""
        layers = self.layout.fused()
        table = {layer.target: layer for layer in layers}
        table.update({part: layer for layer in layers for part in layer.parts})
        return table

    def for_model(self, configs: Mapping[str, Mapping[str, Any]]) -> FluxKohyaNaming:
        transformer = configs.get(TRANSFORMER)
        if transformer is None:
            return self
        return FluxKohyaNaming(layout_of_config(transformer), self.implementation, self.dotted, self.diffusers_named)

    def to_kohya(self, module: str) -> str:
        """A joined module (`transformer.<BFL path>`, `text_encoder.<path>`) -> its kohya name."""
        return self.dotted.to_kohya(module)

    def from_kohya(self, name: str, *, hf_text_model: bool | None = None) -> str:
        diffusers_named = ("lora_transformer_", "lora_te2_", "lycoris_")
        naming = self.diffusers_named if name.startswith(diffusers_named) else self.dotted
        return naming.from_kohya(name, hf_text_model=hf_text_model)

    # ---------------------------------------------------------------------------------------- join
    def join(
        self, tensors: Mapping[str, torch.Tensor], alphas: Mapping[str, float]
    ) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
        """Neutral-form adapters with the transformer's renamed to BFL modules and fused parts merged."""
        out: Modules = {}
        out_alphas: dict[str, float] = {}
        fused: dict[str, dict[int, tuple[dict[str, torch.Tensor], float]]] = {}
        for module, params in group_modules(tensors).items():
            component, _, path = module.partition(".")
            if component != TRANSFORMER:
                out[module], out_alphas[module] = params, alphas[module]
                continue
            layer = self._fused.get(path)
            if layer is not None:
                fused.setdefault(layer.target, {})[layer.parts.index(path)] = (params, alphas[module])
                continue
            target = self._renamed.get(path)
            if target is None:
                raise KeyMapError(f"{module}: no module of BFL's FLUX.1 transformer corresponds to it")
            swapped = path in dict(SWAPPED)
            joined = f"{TRANSFORMER}.{target}"
            out[joined] = swap_rows(params, module) if swapped else params
            out_alphas[joined] = alphas[module]
        for target, parts in fused.items():
            name = f"{TRANSFORMER}.{target}"
            out[name], out_alphas[name] = self._merge(self._fused[target], parts)
        return flatten_modules(out), out_alphas

    def _merge(
        self, layer: FusedLayer, parts: dict[int, tuple[dict[str, torch.Tensor], float]]
    ) -> tuple[dict[str, torch.Tensor], float]:
        import torch

        kinds = {adapter_kind(params, f"{TRANSFORMER}.{layer.parts[i]}") for i, (params, _) in parts.items()}
        ranks = {adapter_rank(params) for params, _ in parts.values()}
        scales = {alpha for _, alpha in parts.values()}
        if len(kinds) != 1 or len(ranks) != 1 or len(scales) != 1:
            raise KeyMapError(
                f"{TRANSFORMER}.{layer.target}: its parts {', '.join(layer.parts)} have adapters of different kinds, "
                "ranks or alphas, which one fused BFL layer cannot hold",
                hint="Save it as peft (diffusers keys).",
            )
        kind, rank, alpha = kinds.pop(), ranks.pop(), scales.pop()
        n = len(layer.parts)
        ratios = layer.ratios or (1,) * n
        index, (sample, _) = next(iter(parts.items()))
        out_rows = (sample["lora_B.weight"] if kind == "lora" else sample["hada_w1_a"]).shape[0]
        unit = out_rows // ratios[index]
        down_in = (sample["lora_A.weight"] if kind == "lora" else sample["hada_w1_b"]).shape[1]
        like = next(iter(sample.values()))

        def part(i: int, param: str, shape: tuple[int, int]) -> torch.Tensor:
            found = parts.get(i)
            return found[0][param] if found is not None else torch.zeros(shape, dtype=like.dtype, device=like.device)

        if kind == "lora":
            merged = {
                "lora_A.weight": torch.cat([part(i, "lora_A.weight", (rank, down_in)) for i in range(n)]),
                "lora_B.weight": _block_diagonal(
                    [part(i, "lora_B.weight", (unit * ratios[i], rank)) for i in range(n)]
                ),
            }
        else:
            merged = {}
            for factor in ("hada_w1", "hada_w2"):
                merged[f"{factor}_a"] = _block_diagonal(
                    [part(i, f"{factor}_a", (unit * ratios[i], rank)) for i in range(n)]
                )
                merged[f"{factor}_b"] = torch.cat([part(i, f"{factor}_b", (rank, down_in)) for i in range(n)])
        return merged, alpha * n

    # --------------------------------------------------------------------------------------- split
    def whole_fused(
        self, tensors: Mapping[str, torch.Tensor], alphas: Mapping[str, float]
    ) -> tuple[dict[str, torch.Tensor], dict[str, float], list[FusedAdapter]]:
        """For sampling: a LoKr or DoRA on a fused layer, or a LoKr on the swapped final modulation (sd-scripts
        with LyCORIS writes them), taken out whole for `lora_merge` to apply to the joined weights."""
        swapped = {bfl: diffusers for diffusers, bfl in SWAPPED}
        return take_whole(tensors, alphas, TRANSFORMER, self._fused, swapped)

    def split(
        self, tensors: Mapping[str, torch.Tensor], alphas: Mapping[str, float]
    ) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
        """The inverse of `join`: BFL modules back to diffusers layers, fused ones split."""
        reverse = {bfl: diffusers for diffusers, bfl in self._renamed.items()}
        out: Modules = {}
        out_alphas: dict[str, float] = {}
        for module, params in group_modules(tensors).items():
            component, _, path = module.partition(".")
            if component != TRANSFORMER:
                out[module], out_alphas[module] = params, alphas[module]
                continue
            layer = self._fused.get(path)
            if layer is not None and layer.target == path:
                for part, (part_params, alpha) in split_fused(layer, params, alphas[module], module).items():
                    name = f"{TRANSFORMER}.{part}"
                    out[name], out_alphas[name] = part_params, alpha
                continue
            if layer is not None or path in self._renamed:  # a diffusers layer already (OneTrainer's names)
                out[module], out_alphas[module] = params, alphas[module]
                continue
            target = reverse.get(path)
            if target is None:
                raise KeyMapError(f"{module}: not a module of this FLUX.1 transformer")
            name = f"{TRANSFORMER}.{target}"
            out[name] = swap_rows(params, module) if target in dict(SWAPPED) else params
            out_alphas[name] = alphas[module]
        return flatten_modules(out), out_alphas


LORA_NAMING = FluxKohyaNaming()
