"""Rename tables between diffusers and the original (LDM/SGM) checkpoint layout of Stability's UNet models.

The tables are data: lists of `Row`s. What varies between models is only the count of blocks and
layers (the 1.x UNet has 4 levels of 2 layers; our tiny test models 2 levels of 1), so each table is
generated from a small `SdLayout`, which is read off the key names of either side. Families compose
them into their single-file layouts.

Index rules (L = UNet layers per block, N = VAE levels), as the LDM code numbers its modules:
- UNet down block i, layer j -> `input_blocks.{1 + i(L+1) + j}`; its downsampler -> `.{(i+1)(L+1)}.0.op`;
  up block i, layer j -> `output_blocks.{i(L+1) + j}` (L+1 layers); its upsampler sits after the
  attention in the last layer: `.{i(L+1) + L}.{2 if the block has attention else 1}.conv`.
- VAE decoder levels count the other way: diffusers `up_blocks.i` is LDM `up.{N-1-i}`.
- The VAE mid attention uses 1x1 convs in LDM where diffusers uses Linear layers.
- A CLIP text encoder keeps the transformers layout (`cond_stage_model.transformer.` in 1.x files);
  an OpenCLIP one has q/k/v fused into one `in_proj` and the positional embedding a bare tensor.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from onetrainer.util.keymaps.engine import CONV1X1, COPY, TRANSPOSE, Row

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
CLIP_PREFIX = "cond_stage_model.transformer.text_model."
OPENCLIP_PREFIX = "cond_stage_model.model."

UNET_TOP_LEVEL = (
    ("time_embedding.linear_1.", "time_embed.0."),
    ("time_embedding.linear_2.", "time_embed.2."),
    ("conv_in.", "input_blocks.0.0."),
    ("conv_norm_out.", "out.0."),
    ("conv_out.", "out.2."),
    ("add_embedding.linear_1.", "label_emb.0.0."),
    ("add_embedding.linear_2.", "label_emb.0.2."),
)
UNET_RESNET = (
    ("norm1.", "in_layers.0."),
    ("conv1.", "in_layers.2."),
    ("norm2.", "out_layers.0."),
    ("conv2.", "out_layers.3."),
    ("time_emb_proj.", "emb_layers.1."),
    ("conv_shortcut.", "skip_connection."),
)
VAE_TOP_LEVEL = (
    ("conv_in.", "conv_in."),
    ("conv_out.", "conv_out."),
    ("conv_norm_out.", "norm_out."),
)
VAE_RESNET = (
    ("norm1.", "norm1."),
    ("conv1.", "conv1."),
    ("norm2.", "norm2."),
    ("conv2.", "conv2."),
    ("conv_shortcut.", "nin_shortcut."),
)
VAE_ATTENTION = (
    ("group_norm.", "norm.", ""),
    ("to_q.", "q.", CONV1X1),
    ("to_k.", "k.", CONV1X1),
    ("to_v.", "v.", CONV1X1),
    ("to_out.0.", "proj_out.", CONV1X1),
)
OPENCLIP_TOP_LEVEL = (
    ("embeddings.token_embedding.weight", "token_embedding.weight"),
    ("embeddings.position_embedding.weight", "positional_embedding"),
    ("final_layer_norm.", "ln_final."),
)
OPENCLIP_LAYER = (
    ("layer_norm1.", "ln_1."),
    ("layer_norm2.", "ln_2."),
    ("mlp.fc1.", "mlp.c_fc."),
    ("mlp.fc2.", "mlp.c_proj."),
    ("self_attn.out_proj.", "attn.out_proj."),
)


@dataclass(frozen=True)
class SdLayout:
    """The counts that decide the index arithmetic of the SD tables."""

    unet_blocks: int
    unet_layers: int
    unet_up_attention: frozenset[int]
    vae_blocks: int
    vae_layers: int
    te_layers: int

    @classmethod
    def from_diffusers_keys(cls, keys: Iterable[str]) -> SdLayout:
        """Read the layout from component-prefixed diffusers keys (`unet.`, `vae.`, `text_encoder.`)."""
        keys = list(keys)
        return cls(
            unet_blocks=_count(keys, r"unet\.down_blocks\.(\d+)\."),
            unet_layers=_count(keys, r"unet\.down_blocks\.0\.resnets\.(\d+)\."),
            unet_up_attention=frozenset(_indices(keys, r"unet\.up_blocks\.(\d+)\.attentions\.")),
            vae_blocks=_count(keys, r"vae\.encoder\.down_blocks\.(\d+)\."),
            vae_layers=_count(keys, r"vae\.encoder\.down_blocks\.0\.resnets\.(\d+)\."),
            te_layers=_count(keys, r"text_encoder\.(?:text_model\.)?encoder\.layers\.(\d+)\."),
        )

    @classmethod
    def from_single_file_keys(cls, keys: Iterable[str]) -> SdLayout:
        """Read the layout from original-checkpoint keys."""
        keys = list(keys)
        p = re.escape(UNET_PREFIX)
        inputs = _count(keys, p + r"input_blocks\.(\d+)\.")
        downsamplers = sorted(_indices(keys, p + r"input_blocks\.(\d+)\.0\.op\."))
        per_block = downsamplers[0] if downsamplers else inputs  # L + 1
        blocks = inputs // per_block if per_block else 0
        up_attention = {i for i in range(blocks) if _indices(keys, p + rf"output_blocks\.({i * per_block})\.1\.")}
        return cls(
            unet_blocks=blocks,
            unet_layers=per_block - 1,
            unet_up_attention=frozenset(up_attention),
            vae_blocks=_count(keys, re.escape(VAE_PREFIX) + r"encoder\.down\.(\d+)\."),
            vae_layers=_count(keys, re.escape(VAE_PREFIX) + r"encoder\.down\.0\.block\.(\d+)\."),
            te_layers=max(
                _count(keys, re.escape(CLIP_PREFIX) + r"encoder\.layers\.(\d+)\."),
                _count(keys, re.escape(OPENCLIP_PREFIX) + r"transformer\.resblocks\.(\d+)\."),
            ),
        )


def vae_layout(keys: Iterable[str], *, prefix: str = VAE_PREFIX, diffusers: bool = False) -> SdLayout:
    """The levels of a VAE alone (the UNet and text-encoder counts are 0), from its LDM keys under `prefix`
    or, with `diffusers`, its `vae.`-prefixed diffusers keys."""
    keys = list(keys)
    if diffusers:
        blocks, layers = r"vae\.encoder\.down_blocks\.(\d+)\.", r"vae\.encoder\.down_blocks\.0\.resnets\.(\d+)\."
    else:
        p = re.escape(prefix)
        blocks, layers = p + r"encoder\.down\.(\d+)\.", p + r"encoder\.down\.0\.block\.(\d+)\."
    return SdLayout(0, 0, frozenset(), _count(keys, blocks), _count(keys, layers), 0)


def _indices(keys: Iterable[str], pattern: str) -> set[int]:
    regex = re.compile(pattern)
    return {int(m.group(1)) for key in keys if (m := regex.match(key))}


def _count(keys: Iterable[str], pattern: str) -> int:
    found = _indices(keys, pattern)
    return max(found) + 1 if found else 0


def _nested(outer_src: str, outer_dst: str, inner: Iterable[tuple[str, ...]]) -> Iterator[Row]:
    for src, dst, *op in inner:  # (source, target) or (source, target, op)
        yield Row(outer_src + src, outer_dst + dst, op[0] if op else COPY)


def unet_rows(layout: SdLayout, src: str = "unet.", dst: str = UNET_PREFIX) -> Iterator[Row]:
    """UNet2DConditionModel <-> LDM/SGM `UNetModel`."""
    per_block = layout.unet_layers + 1
    yield from _nested(src, dst, UNET_TOP_LEVEL)
    for i in range(layout.unet_blocks):
        for j in range(layout.unet_layers):
            index = 1 + i * per_block + j
            yield from _nested(f"{src}down_blocks.{i}.resnets.{j}.", f"{dst}input_blocks.{index}.0.", UNET_RESNET)
            yield Row(f"{src}down_blocks.{i}.attentions.{j}.", f"{dst}input_blocks.{index}.1.")
        yield Row(f"{src}down_blocks.{i}.downsamplers.0.conv.", f"{dst}input_blocks.{(i + 1) * per_block}.0.op.")
        for j in range(per_block):
            index = i * per_block + j
            yield from _nested(f"{src}up_blocks.{i}.resnets.{j}.", f"{dst}output_blocks.{index}.0.", UNET_RESNET)
            yield Row(f"{src}up_blocks.{i}.attentions.{j}.", f"{dst}output_blocks.{index}.1.")
        slot = 2 if i in layout.unet_up_attention else 1  # the upsampler follows the attention, if any
        last = i * per_block + per_block - 1
        yield Row(f"{src}up_blocks.{i}.upsamplers.0.conv.", f"{dst}output_blocks.{last}.{slot}.conv.")
    for k in range(2):
        yield from _nested(f"{src}mid_block.resnets.{k}.", f"{dst}middle_block.{2 * k}.", UNET_RESNET)
    yield Row(f"{src}mid_block.attentions.0.", f"{dst}middle_block.1.")


def vae_rows(layout: SdLayout, src: str = "vae.", dst: str = VAE_PREFIX) -> Iterator[Row]:
    """AutoencoderKL <-> LDM `AutoencoderKL` (encoder levels count up, decoder levels count down)."""
    yield Row(f"{src}quant_conv.", f"{dst}quant_conv.")
    yield Row(f"{src}post_quant_conv.", f"{dst}post_quant_conv.")
    for part in ("encoder", "decoder"):
        s, d = f"{src}{part}.", f"{dst}{part}."
        yield from _nested(s, d, VAE_TOP_LEVEL)
        for k in range(2):
            yield from _nested(f"{s}mid_block.resnets.{k}.", f"{d}mid.block_{k + 1}.", VAE_RESNET)
        yield from _nested(f"{s}mid_block.attentions.0.", f"{d}mid.attn_1.", VAE_ATTENTION)
    for i in range(layout.vae_blocks):
        up = layout.vae_blocks - 1 - i
        yield Row(f"{src}encoder.down_blocks.{i}.downsamplers.0.conv.", f"{dst}encoder.down.{i}.downsample.conv.")
        yield Row(f"{src}decoder.up_blocks.{i}.upsamplers.0.conv.", f"{dst}decoder.up.{up}.upsample.conv.")
        # Decoder levels hold one more resnet than encoder levels; an encoder row too many is harmless.
        for j in range(layout.vae_layers + 1):
            enc, dec = f"encoder.down_blocks.{i}.resnets.{j}.", f"decoder.up_blocks.{i}.resnets.{j}."
            yield from _nested(src + enc, f"{dst}encoder.down.{i}.block.{j}.", VAE_RESNET)
            yield from _nested(src + dec, f"{dst}decoder.up.{up}.block.{j}.", VAE_RESNET)


def clip_rows(hf_text_model: bool, src: str = "text_encoder.", dst: str = CLIP_PREFIX) -> Iterator[Row]:
    """transformers CLIPTextModel <-> `cond_stage_model.transformer.text_model.*` (same names).

    transformers >= 5.6 flattened CLIPTextModel, whose keys lost their `text_model.` prefix; the
    single file keeps it, because that is what A1111, ComfyUI and diffusers look for.
    """
    yield Row(src + ("text_model." if hf_text_model else ""), dst)


def openclip_rows(
    layout: SdLayout,
    hf_text_model: bool,
    *,
    with_projection: bool = False,
    src: str = "text_encoder.",
    dst: str = OPENCLIP_PREFIX,
) -> Iterator[Row]:
    """transformers CLIP text model <-> OpenCLIP text tower (`cond_stage_model.model.*` by default).

    `with_projection` adds the projection of CLIPTextModelWithProjection, which OpenCLIP stores
    transposed and without `.weight`.
    """
    s = src + ("text_model." if hf_text_model else "")
    yield from _nested(s, dst, OPENCLIP_TOP_LEVEL)
    if with_projection:
        yield Row(f"{src}text_projection.weight", f"{dst}text_projection", TRANSPOSE)
    for n in range(layout.te_layers):
        hf, oc = f"{s}encoder.layers.{n}.", f"{dst}transformer.resblocks.{n}."
        yield from _nested(hf, oc, OPENCLIP_LAYER)
        for leaf in ("weight", "bias"):
            qkv = tuple(f"{hf}self_attn.{p}_proj.{leaf}" for p in "qkv")
            yield Row(qkv, f"{oc}attn.in_proj_{leaf}")
