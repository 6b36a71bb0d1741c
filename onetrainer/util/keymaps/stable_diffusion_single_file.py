"""diffusers <-> original single-file checkpoints of Stable Diffusion 1.x and 2.x.

A single file is what A1111/Forge and ComfyUI load: one safetensors with the UNet under
`model.diffusion_model.`, the VAE under `first_stage_model.` and the text encoder under
`cond_stage_model.` (CLIP layout for 1.x, OpenCLIP layout for 2.x). diffusers reads it back with
`from_single_file(path, config=<diffusers folder>)`.

On the diffusers side keys carry their component folder name (`unet.`, `vae.`, `text_encoder.`), so
one table and one key namespace cover the whole pipeline. `StableDiffusionSingleFile.writer` /
`.reader` convert tensor by tensor (a multi-GB checkpoint never exists twice in memory); they need
only the key names up front, e.g. from the file header. The whole-dict functions serve tests.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from onetrainer.util.family import ZERO_TERMINAL_SNR_SCHEDULE
from onetrainer.util.keymaps.clip import clip_text_model_is_wrapped
from onetrainer.util.keymaps.engine import Ignore, KeyTable, Row, StreamConverter
from onetrainer.util.keymaps.ldm_tables import (
    CLIP_PREFIX,
    OPENCLIP_PREFIX,
    SdLayout,
    clip_rows,
    openclip_rows,
    unet_rows,
    vae_rows,
)

if TYPE_CHECKING:
    import torch

COMPONENTS = ("unet", "vae", "text_encoder")
LEGACY_CLIP_PREFIX = "cond_stage_model.transformer."
"""Where 1.x files saved with transformers before 4.x's `text_model` wrapper keep CLIP's modules
(`embeddings.*`, `encoder.*`, `final_layer_norm.*`); A1111 and ComfyUI read them too."""

V_PRED_MARKER = "v_pred"
"""An empty tensor ComfyUI writes into (and reads from) v-prediction checkpoints."""
ZTSNR_MARKER = "ztsnr"
"""An empty tensor ComfyUI reads (beside `v_pred`) as "sample on a zero-terminal-SNR schedule"."""

# Keys real checkpoints carry that no diffusers component holds: the DDPM schedule buffers, EMA
# bookkeeping, ComfyUI's markers, CLIP's position ids (a non-persistent buffer in transformers).
# The OpenCLIP tower also keeps its logit scale and a text projection the 2.x pipeline never uses.
READ_IGNORE = Ignore(
    exact=frozenset(
        {
            V_PRED_MARKER,
            ZTSNR_MARKER,
            "betas",
            "alphas_cumprod",
            "alphas_cumprod_prev",
            "sqrt_alphas_cumprod",
            "sqrt_one_minus_alphas_cumprod",
            "log_one_minus_alphas_cumprod",
            "sqrt_recip_alphas_cumprod",
            "sqrt_recipm1_alphas_cumprod",
            "posterior_variance",
            "posterior_log_variance_clipped",
            "posterior_mean_coef1",
            "posterior_mean_coef2",
            "logvar",
            OPENCLIP_PREFIX + "logit_scale",
            OPENCLIP_PREFIX + "text_projection",
        }
    ),
    prefixes=("model_ema.",),
    suffixes=("embeddings.position_ids",),
)
WRITE_IGNORE = Ignore(suffixes=("embeddings.position_ids",))

COMPONENT_PREFIXES = (
    ("model.diffusion_model.", "unet"),
    ("first_stage_model.", "vae"),
    ("cond_stage_model.", "text_encoder"),
)


@dataclass(frozen=True)
class StableDiffusionSingleFile:
    """The single-file layout of one family: `openclip` says its text encoder is OpenCLIP's (2.x)."""

    openclip: bool
    component_prefixes: tuple[tuple[str, str], ...] = COMPONENT_PREFIXES

    def _text_rows(self, layout: SdLayout, hf_text_model: bool, clip_prefix: str) -> Iterator[Row]:
        return openclip_rows(layout, hf_text_model) if self.openclip else clip_rows(hf_text_model, dst=clip_prefix)

    def table(self, layout: SdLayout, *, hf_text_model: bool | None = None, clip_prefix: str = CLIP_PREFIX) -> KeyTable:
        """The whole-pipeline table (diffusers side is `forward`).

        `hf_text_model` says whether diffusers text-encoder keys start with `text_model.`; None means
        "as the installed transformers names them". `clip_prefix` is where a 1.x file keeps its CLIP text
        model (`LEGACY_CLIP_PREFIX` in files saved before transformers wrapped it in `text_model`).
        """
        if hf_text_model is None:
            hf_text_model = clip_text_model_is_wrapped()
        text = self._text_rows(layout, hf_text_model, clip_prefix)
        return KeyTable([*unet_rows(layout), *vae_rows(layout), *text])

    def writer(self, diffusers_keys: Iterable[str]) -> StreamConverter:
        """A converter for a model with these component-prefixed diffusers keys, fed one tensor at a time."""
        keys = list(diffusers_keys)
        wrapped = any(key.startswith("text_encoder.text_model.") for key in keys)
        return StreamConverter(
            self.table(SdLayout.from_diffusers_keys(keys), hf_text_model=wrapped), ignore=WRITE_IGNORE
        )

    def reader(
        self,
        keys: Iterable[str],
        *,
        text_encoder_layers: Mapping[str, int] | None = None,
        hf_text_model: bool | None = None,
    ) -> StreamConverter:
        """A converter from a single file with these keys to component-prefixed diffusers keys.

        `text_encoder_layers["text_encoder"]` keeps only that many encoder layers (see `read_ignore`);
        `hf_text_model` chooses `text_model.`-prefixed encoder keys (None: as installed transformers).
        """
        keys = list(keys)
        layout = SdLayout.from_single_file_keys(keys)
        legacy = not any(key.startswith(CLIP_PREFIX) for key in keys) and any(
            key.startswith(LEGACY_CLIP_PREFIX) for key in keys
        )
        table = self.table(
            layout, hf_text_model=hf_text_model, clip_prefix=LEGACY_CLIP_PREFIX if legacy else CLIP_PREFIX
        )
        layers = (text_encoder_layers or {}).get("text_encoder")
        return StreamConverter(table, reverse=True, ignore=read_ignore(layout, layers))

    def markers(self, prediction_type: str | None, *, zero_terminal_snr: bool = False) -> dict[str, torch.Tensor]:
        return comfy_markers(prediction_type, zero_terminal_snr)

    def schedule(self, keys: Iterable[str]) -> dict[str, Any]:
        return comfy_schedule(keys)


CLIP_LAYOUT = StableDiffusionSingleFile(openclip=False)
OPENCLIP_LAYOUT = StableDiffusionSingleFile(openclip=True)


def comfy_markers(prediction_type: str | None, zero_terminal_snr: bool) -> dict[str, torch.Tensor]:
    """ComfyUI's empty markers: `v_pred` for v-prediction, `ztsnr` for a zero-terminal-SNR schedule."""
    import torch

    markers = {V_PRED_MARKER: torch.empty(0)} if prediction_type == "v_prediction" else {}
    if zero_terminal_snr:
        markers[ZTSNR_MARKER] = torch.empty(0)
    return markers


def comfy_schedule(keys: Iterable[str]) -> dict[str, Any]:
    """The zero-terminal-SNR settings where ComfyUI's `ztsnr` marker says so (v-prediction anime fine-tunes)."""
    return dict(ZERO_TERMINAL_SNR_SCHEDULE) if ZTSNR_MARKER in keys else {}


def read_ignore(layout: SdLayout, text_encoder_layers: int | None = None) -> Ignore:
    """What reading a single file drops; with `text_encoder_layers`, also the encoder layers past it.

    2.x checkpoints hold all 24 OpenCLIP layers, but 2.x conditions on the penultimate layer, so the
    diffusers text encoder has 23 and the last layer is dead weight.
    """
    if text_encoder_layers is None or text_encoder_layers >= layout.te_layers:
        return READ_IGNORE
    layer_prefixes = (OPENCLIP_PREFIX + "transformer.resblocks.", CLIP_PREFIX + "encoder.layers.")
    extra = tuple(f"{p}{n}." for n in range(text_encoder_layers, layout.te_layers) for p in layer_prefixes)
    return Ignore(READ_IGNORE.exact, READ_IGNORE.prefixes + extra, READ_IGNORE.suffixes)


def diffusers_to_single_file(
    unet_sd: Mapping[str, torch.Tensor],
    vae_sd: Mapping[str, torch.Tensor],
    te_sd: Mapping[str, torch.Tensor],
    single_file: StableDiffusionSingleFile,
    *,
    prediction_type: str | None = None,
    zero_terminal_snr: bool = False,
) -> dict[str, torch.Tensor]:
    """Build the original single-file state dict from the three diffusers component state dicts.

    Tensors are not copied (views where a reshape is needed).
    """
    joined = _prefixed({"unet": unet_sd, "vae": vae_sd, "text_encoder": te_sd})
    markers = single_file.markers(prediction_type, zero_terminal_snr=zero_terminal_snr)
    return {**single_file.writer(joined).convert(joined), **markers}


def single_file_to_diffusers(
    sd: Mapping[str, torch.Tensor],
    single_file: StableDiffusionSingleFile,
    *,
    text_encoder_layers: int | None = None,
    hf_text_model: bool | None = None,
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Split a single file into (unet, vae, text_encoder) diffusers state dicts.

    A component the file lacks comes back empty. Keys that fit no rule raise `KeyMapError` (all of
    them listed), except known non-weights (`READ_IGNORE`).
    """
    layers = None if text_encoder_layers is None else {"text_encoder": text_encoder_layers}
    stream = single_file.reader(sd, text_encoder_layers=layers, hf_text_model=hf_text_model)
    joined = stream.convert(sd)
    parts: dict[str, dict[str, torch.Tensor]] = {name: {} for name in COMPONENTS}
    for key, tensor in joined.items():
        component, _, rest = key.partition(".")
        parts[component][rest] = tensor
    return parts["unet"], parts["vae"], parts["text_encoder"]


def _prefixed(components: Mapping[str, Mapping[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    return {f"{name}.{key}": tensor for name, sd in components.items() for key, tensor in sd.items()}
