"""diffusers <-> the original single-file layout of SDXL (Stability's SGM checkpoints).

This is what ComfyUI, A1111/Forge and diffusers' `from_single_file` load:
- the UNet under `model.diffusion_model.` (the LDM/SGM `UNetModel`, with `label_emb` for the size and
  pooled-text conditioning and transformer depth > 1 inside each attention block);
- the VAE under `first_stage_model.`;
- CLIP ViT-L under `conditioner.embedders.0.transformer.text_model.` (transformers' names);
- OpenCLIP ViT-bigG under `conditioner.embedders.1.model.` (OpenCLIP's names: fused q/k/v `in_proj`,
  a bare `positional_embedding`, the pooled-output projection as a transposed bare `text_projection`).

The rows come from `ldm_tables` (the same UNet, VAE and text-tower tables as SD 1.x/2.x), with this
family's prefixes and each text encoder's own layer count. On the diffusers side keys carry their
component name (`unet.`, `vae.`, `text_encoder.`, `text_encoder_2.`), as in the SD layout.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from onetrainer.util.keymaps.clip import clip_text_model_is_wrapped
from onetrainer.util.keymaps.engine import Ignore, KeyTable, StreamConverter
from onetrainer.util.keymaps.ldm_tables import (
    UNET_PREFIX,
    VAE_PREFIX,
    SdLayout,
    clip_rows,
    openclip_rows,
    unet_rows,
    vae_rows,
)
from onetrainer.util.keymaps.stable_diffusion_single_file import READ_IGNORE as SD_READ_IGNORE
from onetrainer.util.keymaps.stable_diffusion_single_file import comfy_markers, comfy_schedule

if TYPE_CHECKING:
    import torch

CLIP_L_PREFIX = "conditioner.embedders.0.transformer.text_model."
BIGG_PREFIX = "conditioner.embedders.1.model."
BIGG_LAYERS = re.escape(BIGG_PREFIX) + r"transformer\.resblocks\.(\d+)\."

COMPONENT_PREFIXES = (
    (UNET_PREFIX, "unet"),
    (VAE_PREFIX, "vae"),
    ("conditioner.embedders.0.", "text_encoder"),
    ("conditioner.embedders.1.", "text_encoder_2"),
)

# What real SDXL files carry that no diffusers component holds: besides the SD set (DDPM buffers, EMA,
# ComfyUI's `v_pred` / `ztsnr` markers, position ids), OpenCLIP's logit scale and the sigmas buffer of
# SGM's denoiser (written by some trainers).
READ_IGNORE = Ignore(
    exact=SD_READ_IGNORE.exact | {BIGG_PREFIX + "logit_scale"},
    prefixes=(*SD_READ_IGNORE.prefixes, "denoiser."),
    suffixes=SD_READ_IGNORE.suffixes,
)
WRITE_IGNORE = Ignore(suffixes=("embeddings.position_ids",))


def _count(keys: Iterable[str], pattern: str) -> int:
    regex = re.compile(pattern)
    found = [int(m.group(1)) for key in keys if (m := regex.match(key))]
    return max(found) + 1 if found else 0


@dataclass(frozen=True)
class SdxlSingleFile:
    """The SGM layout, both ways (a `SingleFileFormat`)."""

    component_prefixes: tuple[tuple[str, str], ...] = COMPONENT_PREFIXES

    def table(
        self, layout: SdLayout, bigg_layers: int, *, te1_wrapped: bool | None = None, te2_wrapped: bool | None = None
    ) -> KeyTable:
        """The whole-pipeline table (diffusers side is `forward`).

        `te1_wrapped` / `te2_wrapped` say whether the diffusers keys of each text encoder start with
        `text_model.`; None means "as the installed transformers names them".
        """
        if te1_wrapped is None:
            te1_wrapped = clip_text_model_is_wrapped()
        if te2_wrapped is None:
            te2_wrapped = clip_text_model_is_wrapped(with_projection=True)
        bigg = dataclasses.replace(layout, te_layers=bigg_layers)
        return KeyTable(
            [
                *unet_rows(layout),
                *vae_rows(layout),
                *clip_rows(te1_wrapped, dst=CLIP_L_PREFIX),
                *openclip_rows(bigg, te2_wrapped, with_projection=True, src="text_encoder_2.", dst=BIGG_PREFIX),
            ]
        )

    def writer(self, diffusers_keys: Iterable[str]) -> StreamConverter:
        keys = list(diffusers_keys)
        table = self.table(
            SdLayout.from_diffusers_keys(keys),
            _count(keys, r"text_encoder_2\.(?:text_model\.)?encoder\.layers\.(\d+)\."),
            te1_wrapped=any(key.startswith("text_encoder.text_model.") for key in keys),
            te2_wrapped=any(key.startswith("text_encoder_2.text_model.") for key in keys),
        )
        return StreamConverter(table, ignore=WRITE_IGNORE)

    def reader(self, keys: Iterable[str], *, text_encoder_layers: Mapping[str, int] | None = None) -> StreamConverter:
        """A converter from an SGM file with these keys to component-prefixed diffusers keys.

        Layers a file holds past `text_encoder_layers` (text encoder -> diffusers layer count) are
        dropped; released SDXL files hold exactly the layers diffusers' encoders have.
        """
        keys = list(keys)
        bigg_layers = _count(keys, BIGG_LAYERS)
        table = self.table(SdLayout.from_single_file_keys(keys), bigg_layers)
        layers = text_encoder_layers or {}
        clip_layers = _count(keys, re.escape(CLIP_L_PREFIX) + r"encoder\.layers\.(\d+)\.")
        extra: list[str] = []
        for prefix, encoder, present in (
            (CLIP_L_PREFIX + "encoder.layers.", "text_encoder", clip_layers),
            (BIGG_PREFIX + "transformer.resblocks.", "text_encoder_2", bigg_layers),
        ):
            kept = layers.get(encoder)
            if kept is not None:
                extra += [f"{prefix}{n}." for n in range(kept, present)]
        ignore = Ignore(READ_IGNORE.exact, READ_IGNORE.prefixes + tuple(extra), READ_IGNORE.suffixes)
        return StreamConverter(table, reverse=True, ignore=ignore)

    def markers(self, prediction_type: str | None, *, zero_terminal_snr: bool = False) -> dict[str, torch.Tensor]:
        """ComfyUI's `v_pred` / `ztsnr` markers, as v-prediction fine-tunes (NoobAI-XL v-pred) carry them."""
        return comfy_markers(prediction_type, zero_terminal_snr)

    def schedule(self, keys: Iterable[str]) -> dict[str, Any]:
        return comfy_schedule(keys)


SDXL_LAYOUT = SdxlSingleFile()
