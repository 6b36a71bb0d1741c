"""diffusers <-> the original single-file layout of SD 3 / 3.5 (Stability's MMDiT checkpoints).

This is what ComfyUI loads as a checkpoint and diffusers' `StableDiffusion3Pipeline.from_single_file`
converts (`convert_sd3_transformer_checkpoint_to_diffusers` and its CLIP / T5 readers):
- the MMDiT under `model.diffusion_model.`: `x_embedder.proj` (diffusers' `pos_embed.proj`), the
  position table `pos_embed`, `t_embedder.mlp.0/2` and `y_embedder.mlp.0/2` (timestep and pooled-text
  embedders), `context_embedder`, and per `joint_blocks.N` an image stream `x_block` and a text stream
  `context_block`, each with an adaptive-norm modulation `adaLN_modulation.1` (`norm1.linear` /
  `norm1_context.linear`), an attention with FUSED q, k, v (`attn.qkv`, joined along the output rows in
  that order), its RMS q/k norms (`attn.ln_q`, `attn.ln_k`, 3.5 only), its output projection `attn.proj`
  and an MLP `mlp.fc1` / `mlp.fc2`; 3.5 Medium's MMDiT-X blocks add a second image self-attention
  `x_block.attn2` (diffusers' `attn2`) in the same form. The last block's text stream only modulates
  (no output projection, no MLP), and its modulation, like `final_layer.adaLN_modulation.1`
  (`norm_out.linear`), holds (shift, scale) where diffusers holds (scale, shift): the halves swap.
- the VAE under `first_stage_model.` (the LDM layout of `ldm_tables`; SD 3's VAE has no quant convs);
- the text encoders under `text_encoders.`: `clip_l.transformer.`, `clip_g.transformer.` and
  `t5xxl.transformer.`, each in transformers' own key names. T5's `encoder.embed_tokens` is its
  `shared` table: ComfyUI's files hold `shared` alone (which our reader ties back), and we write both
  names, because diffusers' `from_single_file` leaves `encoder.embed_tokens` empty without its own key
  (ComfyUI skips the extra key).

Files may lack text encoders (Stability's `sd3.5_large.safetensors` holds the MMDiT and the VAE); a bare
MMDiT without the `model.diffusion_model.` prefix is read too. On the diffusers side keys carry their
component name (`transformer.`, `vae.`, `text_encoder.`, `text_encoder_2.`, `text_encoder_3.`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from onetrainer.util.keymaps.clip import clip_text_model_is_wrapped
from onetrainer.util.keymaps.comfy import skipping_scaled
from onetrainer.util.keymaps.engine import IDENTITY_ON_READ, SWAP_HALVES, Ignore, KeyTable, Row, StreamConverter
from onetrainer.util.keymaps.ldm_tables import VAE_PREFIX, vae_layout, vae_rows

if TYPE_CHECKING:
    import torch

MMDIT_PREFIX = "model.diffusion_model."
CLIP_L_PREFIX = "text_encoders.clip_l.transformer."
CLIP_G_PREFIX = "text_encoders.clip_g.transformer."
T5_PREFIX = "text_encoders.t5xxl.transformer."
TEXT_ENCODERS = (("text_encoder", CLIP_L_PREFIX), ("text_encoder_2", CLIP_G_PREFIX))
COMPONENT_PREFIXES = (
    (MMDIT_PREFIX, "transformer"),
    (VAE_PREFIX, "vae"),
    ("text_encoders.clip_l.", "text_encoder"),
    ("text_encoders.clip_g.", "text_encoder_2"),
    ("text_encoders.t5xxl.", "text_encoder_3"),
)

TOP_LEVEL = (
    ("pos_embed.pos_embed", "pos_embed"),
    ("pos_embed.proj.", "x_embedder.proj."),
    ("time_text_embed.timestep_embedder.linear_1.", "t_embedder.mlp.0."),
    ("time_text_embed.timestep_embedder.linear_2.", "t_embedder.mlp.2."),
    ("time_text_embed.text_embedder.linear_1.", "y_embedder.mlp.0."),
    ("time_text_embed.text_embedder.linear_2.", "y_embedder.mlp.2."),
    ("context_embedder.", "context_embedder."),
    ("proj_out.", "final_layer.linear."),
)
BLOCK_LAYERS = (
    ("norm1.linear.", "x_block.adaLN_modulation.1."),
    ("norm1_context.linear.", "context_block.adaLN_modulation.1."),
    ("attn.to_out.0.", "x_block.attn.proj."),
    ("attn.to_add_out.", "context_block.attn.proj."),
    ("attn.norm_q.weight", "x_block.attn.ln_q.weight"),
    ("attn.norm_k.weight", "x_block.attn.ln_k.weight"),
    ("attn.norm_added_q.weight", "context_block.attn.ln_q.weight"),
    ("attn.norm_added_k.weight", "context_block.attn.ln_k.weight"),
    ("attn2.to_out.0.", "x_block.attn2.proj."),
    ("attn2.norm_q.weight", "x_block.attn2.ln_q.weight"),
    ("attn2.norm_k.weight", "x_block.attn2.ln_k.weight"),
    ("ff.net.0.proj.", "x_block.mlp.fc1."),
    ("ff.net.2.", "x_block.mlp.fc2."),
    ("ff_context.net.0.proj.", "context_block.mlp.fc1."),
    ("ff_context.net.2.", "context_block.mlp.fc2."),
)
BLOCK_FUSED = (
    (("attn.to_q", "attn.to_k", "attn.to_v"), "x_block.attn.qkv"),
    (("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"), "context_block.attn.qkv"),
    (("attn2.to_q", "attn2.to_k", "attn2.to_v"), "x_block.attn2.qkv"),
)
"""diffusers layers joined (in this order, equal parts) into one layer of the original block."""
SWAPPED = ("norm_out.linear", "final_layer.adaLN_modulation.1")
"""The final modulation, whose rows are (scale, shift) in diffusers and (shift, scale) in the file."""
READ_IGNORE = Ignore(suffixes=(".logit_scale", "embeddings.position_ids"))
"""What ComfyUI's files carry that no diffusers component holds: CLIP's logit scales and position ids."""
SCALABLE_PARTS = tuple(prefix for prefix, component in COMPONENT_PREFIXES if component != "transformer")
"""The parts ComfyUI may store in its scaled fp8 format (its `t5xxl_fp8_e4m3fn_scaled` T5): not read, so they come
from `model.config` as parts a file lacks do (`comfy.scaled_parts`)."""


@dataclass(frozen=True)
class MmditLayout:
    """The block count of an MMDiT: the module map depends on it alone (the last block's text stream swaps)."""

    blocks: int

    def rows(self, *, src: str = "transformer.", dst: str = MMDIT_PREFIX) -> Iterator[Row]:
        """diffusers (`src` + key) -> original (`dst` + key), for every layer such a model may hold."""
        for a, b in TOP_LEVEL:
            yield Row(src + a, dst + b)
        for param in ("weight", "bias"):
            yield Row(f"{src}{SWAPPED[0]}.{param}", f"{dst}{SWAPPED[1]}.{param}", SWAP_HALVES)
        for index in range(self.blocks):
            block, joint = f"{src}transformer_blocks.{index}.", f"{dst}joint_blocks.{index}."
            for a, b in BLOCK_LAYERS:
                yield Row(block + a, joint + b)
            for parts, target in BLOCK_FUSED:
                for param in ("weight", "bias"):
                    yield Row(tuple(f"{block}{part}.{param}" for part in parts), f"{joint}{target}.{param}")
        last = self.blocks - 1
        if last >= 0:
            for param in ("weight", "bias"):
                name = f"norm1_context.linear.{param}"
                target = f"context_block.adaLN_modulation.1.{param}"
                yield Row(f"{src}transformer_blocks.{last}.{name}", f"{dst}joint_blocks.{last}.{target}", SWAP_HALVES)


def _count(keys: Iterable[str], pattern: str) -> int:
    regex = re.compile(pattern)
    found = [int(m.group(1)) for key in keys if (m := regex.match(key))]
    return max(found) + 1 if found else 0


def _text_rows(wrapped: bool) -> Iterator[Row]:
    """The CLIP encoders in transformers' names (`text_model.` kept in the file) and T5 as it is. SD 3 reads
    CLIP-L's pooled output unprojected: its projection is read as the identity, as diffusers'
    `from_single_file` and ComfyUI take it, whatever the file holds (a CLIP-L taken from elsewhere)."""
    for component, prefix in TEXT_ENCODERS:
        if component == "text_encoder":
            yield Row(f"{component}.text_projection.weight", f"{prefix}text_projection.weight", IDENTITY_ON_READ)
        elif not wrapped:
            yield Row(f"{component}.text_projection.", f"{prefix}text_projection.")
        yield Row(f"{component}.", prefix + ("" if wrapped else "text_model."))
    yield Row("text_encoder_3.", T5_PREFIX)


@dataclass(frozen=True)
class Sd3SingleFile:
    """The SD 3 / 3.5 checkpoint layout, both ways (a `SingleFileFormat`)."""

    component_prefixes: tuple[tuple[str, str], ...] = COMPONENT_PREFIXES

    def writer(self, diffusers_keys: Iterable[str]) -> StreamConverter:
        keys = list(diffusers_keys)
        rows = [
            *MmditLayout(_count(keys, r"transformer\.transformer_blocks\.(\d+)\.")).rows(),
            *vae_rows(vae_layout(keys, diffusers=True)),
            *_text_rows(clip_text_model_is_wrapped(with_projection=True)),
        ]
        return _TiedT5Writer(KeyTable(rows), alias=T5_TIED not in keys)

    def reader(self, keys: Iterable[str], *, text_encoder_layers: Mapping[str, int] | None = None) -> StreamConverter:
        """A converter from a checkpoint with these keys (the MMDiT under `model.diffusion_model.` or bare) to
        component-prefixed diffusers keys. SD 3 files hold exactly the text-encoder layers diffusers has."""
        keys = list(keys)
        prefix = MMDIT_PREFIX if any(key.startswith(MMDIT_PREFIX) for key in keys) else ""
        layout = MmditLayout(_count(keys, re.escape(prefix) + r"joint_blocks\.(\d+)\."))
        rows = [
            *layout.rows(dst=prefix),
            *vae_rows(vae_layout(keys)),
            *_text_rows(clip_text_model_is_wrapped(with_projection=True)),
        ]
        return StreamConverter(KeyTable(rows), reverse=True, ignore=skipping_scaled(READ_IGNORE, keys, SCALABLE_PARTS))

    def markers(self, prediction_type: str | None, *, zero_terminal_snr: bool = False) -> dict[str, torch.Tensor]:
        return {}

    def schedule(self, keys: Iterable[str]) -> dict[str, Any]:
        """Flow-matching files carry no schedule markers: their shift comes from the architecture."""
        return {}


T5_SHARED = "text_encoder_3.shared.weight"
T5_TIED = "text_encoder_3.encoder.embed_tokens.weight"


class _TiedT5Writer(StreamConverter):
    """Writes T5's `shared` table under `encoder.embed_tokens` too where the stream lacks that name: a model's
    state dict holds both, but a diffusers folder's file only `shared` (transformers saves a tied weight once),
    and diffusers' `from_single_file` leaves `encoder.embed_tokens` empty without its own key."""

    def __init__(self, table: KeyTable, *, alias: bool) -> None:
        super().__init__(table)
        self._alias = alias

    def feed(self, key: str, tensor: torch.Tensor) -> Iterator[tuple[str, torch.Tensor]]:
        yield from super().feed(key, tensor)
        if self._alias and key == T5_SHARED:
            yield T5_PREFIX + "encoder.embed_tokens.weight", tensor


SD3_LAYOUT = Sd3SingleFile()


def recognise_mmdit(keys: Iterable[str]) -> str | None:
    """Which SD 3 MMDiT a checkpoint's keys hold, as sd-scripts tells them: 3.5 Medium's MMDiT-X blocks have a
    second self-attention (`x_block.attn2`), 3.5 Large has q/k norms without it, SD 3 Medium has neither
    ("sd35-medium", "sd35-large", "sd3-medium"); None without MMDiT blocks."""
    names = [key.removeprefix(MMDIT_PREFIX) for key in keys]
    if not any(name.startswith("joint_blocks.") and ".context_block." in name for name in names):
        return None
    if any(".x_block.attn2." in name for name in names):
        return "sd35-medium"
    if any(".attn.ln_q." in name for name in names):
        return "sd35-large"
    return "sd3-medium"
