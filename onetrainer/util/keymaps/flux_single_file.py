"""diffusers <-> the original single-file layout of the FLUX.1 transformer (Black Forest Labs' files).

BFL publish the transformer alone (`flux1-dev.safetensors`), in their own module names, which ComfyUI
loads as a diffusion model and diffusers' `FluxTransformer2DModel.from_single_file` converts:
- `img_in` / `txt_in` (diffusers' `x_embedder` / `context_embedder`), `time_in`, `vector_in` and dev's
  `guidance_in` (the three embedders of `time_text_embed`), each an MLP of `in_layer` and `out_layer`;
- `double_blocks.N`: per stream (`img_` for the image tokens, `txt_` for the text tokens) a modulation
  `*_mod.lin` (`norm1.linear` / `norm1_context.linear`), an attention with FUSED q, k, v (`*_attn.qkv`,
  joined along the output rows in that order), its q/k RMS norms (`*_attn.norm.query_norm.scale`) and
  output projection (`*_attn.proj`), and an MLP (`*_mlp.0` / `*_mlp.2`);
- `single_blocks.N`: `linear1` fuses q, k, v and the MLP's input projection (`proj_mlp`, 4x wide) in
  that order, `linear2` is `proj_out`, `modulation.lin` is `norm.linear`, `norm.*_norm.scale` the RMS norms;
- `final_layer.linear` (`proj_out`) and `final_layer.adaLN_modulation.1` (`norm_out.linear`), whose
  output rows hold (shift, scale) where diffusers holds (scale, shift): the halves are swapped.

On the diffusers side keys carry the component name (`transformer.`); the file has no prefix, and the
writer writes that file (FLUX.1's single-file format is the transformer's alone). ComfyUI's whole
checkpoints (`flux1-dev-fp8.safetensors` and files saved by its CheckpointSave) put the transformer under
`model.diffusion_model.`, the VAE under `vae.` in the LDM layout of BFL's `ae.safetensors`, CLIP-L under
`text_encoders.clip_l.transformer.` and T5 under `text_encoders.t5xxl.transformer.` (both in transformers'
names; CLIP-L with an identity projection FLUX.1 never applies, which is skipped). The reader takes every
part such a file holds, so its own text encoders and VAE are the ones trained and saved; `model.config`
supplies only the parts a file lacks.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from onetrainer.util.keymaps.clip import clip_text_model_is_wrapped
from onetrainer.util.keymaps.comfy import skipping_scaled
from onetrainer.util.keymaps.engine import SWAP_HALVES, Ignore, KeyTable, Row, StreamConverter
from onetrainer.util.keymaps.fused_lora import FusedLayer
from onetrainer.util.keymaps.ldm_tables import clip_rows, vae_layout, vae_rows

if TYPE_CHECKING:
    import torch

TRANSFORMER = "transformer."
COMFY_PREFIX = "model.diffusion_model."
IMPLEMENTATION = "https://github.com/black-forest-labs/flux"
MLP_RATIO = 4
"""The single blocks' MLP is 4x the model width (fixed in FLUX.1 and in diffusers' single block)."""
RELEASED_BLOCKS = (19, 38)
"""FLUX.1-dev and -schnell: 19 double-stream and 38 single-stream blocks."""
COMFY_VAE = "vae."
COMFY_CLIP_L = "text_encoders.clip_l.transformer."
COMFY_T5 = "text_encoders.t5xxl.transformer."
COMFY_IGNORE = Ignore(
    exact=frozenset({COMFY_CLIP_L + "text_projection.weight"}),
    prefixes=("first_stage_model.", "cond_stage_model.", "conditioner."),
    suffixes=(".logit_scale", "embeddings.position_ids"),
)
"""What a ComfyUI checkpoint holds that no FLUX.1 component does: CLIP-L's (identity) projection and logit
scale, position ids, and parts of other models' layouts some merges leave behind."""
COMFY_PARTS = ("text_encoders.clip_l.", "text_encoders.t5xxl.", COMFY_VAE)
"""The parts of a ComfyUI checkpoint it may store in a scaled format (`comfy.scaled_parts`)."""

EMBEDDERS = (
    ("time_text_embed.timestep_embedder.", "time_in."),
    ("time_text_embed.text_embedder.", "vector_in."),
    ("time_text_embed.guidance_embedder.", "guidance_in."),
)
EMBEDDER_LAYERS = (("linear_1.", "in_layer."), ("linear_2.", "out_layer."))
DOUBLE_LAYERS = (
    ("norm1.linear.", "img_mod.lin."),
    ("norm1_context.linear.", "txt_mod.lin."),
    ("attn.to_out.0.", "img_attn.proj."),
    ("attn.to_add_out.", "txt_attn.proj."),
    ("ff.net.0.proj.", "img_mlp.0."),
    ("ff.net.2.", "img_mlp.2."),
    ("ff_context.net.0.proj.", "txt_mlp.0."),
    ("ff_context.net.2.", "txt_mlp.2."),
    ("attn.norm_q.weight", "img_attn.norm.query_norm.scale"),
    ("attn.norm_k.weight", "img_attn.norm.key_norm.scale"),
    ("attn.norm_added_q.weight", "txt_attn.norm.query_norm.scale"),
    ("attn.norm_added_k.weight", "txt_attn.norm.key_norm.scale"),
)
DOUBLE_FUSED = (
    (("attn.to_q", "attn.to_k", "attn.to_v"), "img_attn.qkv"),
    (("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"), "txt_attn.qkv"),
)
SINGLE_LAYERS = (
    ("norm.linear.", "modulation.lin."),
    ("proj_out.", "linear2."),
    ("attn.norm_q.weight", "norm.query_norm.scale"),
    ("attn.norm_k.weight", "norm.key_norm.scale"),
)
SINGLE_FUSED = ((("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp"), "linear1"),)
SINGLE_RATIOS = (1, 1, 1, MLP_RATIO)
SWAPPED = (("norm_out.linear", "final_layer.adaLN_modulation.1"),)
"""Layers whose output rows are (scale, shift) in diffusers and (shift, scale) in the BFL file."""
PLAIN = (("context_embedder.", "txt_in."), ("x_embedder.", "img_in."), ("proj_out.", "final_layer.linear."))


@dataclass(frozen=True)
class FluxLayout:
    """Which blocks a transformer has: the module map depends on the counts, nothing else."""

    double_blocks: int
    single_blocks: int

    def renamed(self) -> list[tuple[str, str]]:
        """(diffusers prefix or key, BFL prefix or key) of every layer that maps one to one."""
        rows = [(src + layer, dst + bfl) for src, dst in EMBEDDERS for layer, bfl in EMBEDDER_LAYERS]
        rows += list(PLAIN)
        for index in range(self.double_blocks):
            rows += [(f"transformer_blocks.{index}.{a}", f"double_blocks.{index}.{b}") for a, b in DOUBLE_LAYERS]
        for index in range(self.single_blocks):
            rows += [(f"single_transformer_blocks.{index}.{a}", f"single_blocks.{index}.{b}") for a, b in SINGLE_LAYERS]
        return rows

    def fused(self) -> list[FusedLayer]:
        layers = [
            FusedLayer(tuple(f"transformer_blocks.{index}.{part}" for part in parts), f"double_blocks.{index}.{target}")
            for index in range(self.double_blocks)
            for parts, target in DOUBLE_FUSED
        ]
        layers += [
            FusedLayer(
                tuple(f"single_transformer_blocks.{index}.{part}" for part in parts),
                f"single_blocks.{index}.{target}",
                SINGLE_RATIOS,
            )
            for index in range(self.single_blocks)
            for parts, target in SINGLE_FUSED
        ]
        return layers

    def rows(self, *, src: str = TRANSFORMER, dst: str = "") -> list[Row]:
        """The whole table, diffusers (`src` + key) -> BFL (`dst` + key)."""
        rows = [Row(src + a, dst + b) for a, b in self.renamed()]
        for layer in self.fused():
            for param in ("weight", "bias"):
                parts = tuple(f"{src}{part}.{param}" for part in layer.parts)
                rows.append(Row(parts, f"{dst}{layer.target}.{param}", ratios=layer.ratios))
        for a, b in SWAPPED:
            rows += [Row(f"{src}{a}.{param}", f"{dst}{b}.{param}", SWAP_HALVES) for param in ("weight", "bias")]
        return rows

    @classmethod
    def from_keys(cls, keys: Iterable[str], *, double: str, single: str) -> FluxLayout:
        """Count the blocks named in `keys` (`double` / `single`: regexes capturing a block index)."""
        keys = list(keys)
        return cls(_count(keys, double), _count(keys, single))


RELEASED = FluxLayout(*RELEASED_BLOCKS)


def _count(keys: list[str], pattern: str) -> int:
    regex = re.compile(pattern)
    found = [int(m.group(1)) for key in keys if (m := regex.match(key))]
    return max(found) + 1 if found else 0


def layout_of_config(config: Mapping[str, object]) -> FluxLayout:
    """The block counts of a diffusers `FluxTransformer2DModel` config."""
    return FluxLayout(int(str(config["num_layers"])), int(str(config["num_single_layers"])))


DIFFUSERS_DOUBLE = r"transformer\.transformer_blocks\.(\d+)\."
DIFFUSERS_SINGLE = r"transformer\.single_transformer_blocks\.(\d+)\."


@dataclass(frozen=True)
class FluxSingleFile:
    """The BFL transformer file, both ways (a `SingleFileFormat` covering the transformer alone)."""

    component_prefixes: tuple[tuple[str, str], ...] = (("", "transformer"),)
    implementation: str = IMPLEMENTATION
    """`modelspec.implementation` of such a file, as sd-scripts writes it for FLUX.1."""

    def writer(self, diffusers_keys: Iterable[str]) -> StreamConverter:
        layout = FluxLayout.from_keys(diffusers_keys, double=DIFFUSERS_DOUBLE, single=DIFFUSERS_SINGLE)
        return StreamConverter(KeyTable(layout.rows()))

    def reader(self, keys: Iterable[str], *, text_encoder_layers: Mapping[str, int] | None = None) -> StreamConverter:
        """A converter from a BFL file with these keys (bare), or a ComfyUI checkpoint (the transformer under
        `model.diffusion_model.`, with the parts it holds of the VAE and text encoders), to
        component-prefixed diffusers keys."""
        keys = list(keys)
        prefix = COMFY_PREFIX if any(key.startswith(COMFY_PREFIX) for key in keys) else ""
        escaped = re.escape(prefix)
        layout = FluxLayout.from_keys(
            keys, double=escaped + r"double_blocks\.(\d+)\.", single=escaped + r"single_blocks\.(\d+)\."
        )
        if not prefix:
            return StreamConverter(KeyTable(layout.rows()), reverse=True)
        rows = [
            *layout.rows(dst=prefix),
            *vae_rows(vae_layout(keys, prefix=COMFY_VAE), dst=COMFY_VAE),
            *clip_rows(clip_text_model_is_wrapped(), dst=COMFY_CLIP_L + "text_model."),
            Row("text_encoder_2.", COMFY_T5),
        ]
        return StreamConverter(KeyTable(rows), reverse=True, ignore=skipping_scaled(COMFY_IGNORE, keys, COMFY_PARTS))

    def markers(self, prediction_type: str | None, *, zero_terminal_snr: bool = False) -> dict[str, torch.Tensor]:
        return {}

    def schedule(self, keys: Iterable[str]) -> dict[str, Any]:
        """Flow-matching files carry no schedule markers: their shift comes from the architecture."""
        return {}


FLUX_LAYOUT = FluxSingleFile()
