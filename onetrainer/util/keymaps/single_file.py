"""diffusers <-> original single-file checkpoints for SD 1.x and 2.x, plus family detection.

A single file is what A1111/Forge and ComfyUI load: one safetensors with the UNet under
`model.diffusion_model.`, the VAE under `first_stage_model.` and the text encoder under
`cond_stage_model.` (CLIP layout for SD1, OpenCLIP layout for SD2). diffusers reads it back with
`from_single_file(path, config=<diffusers folder>)`.

On the diffusers side keys carry their component folder name (`unet.`, `vae.`, `text_encoder.`), so
one table and one key namespace cover the whole pipeline. Besides the whole-dict functions,
`to_single_file_stream` / `from_single_file_stream` convert tensor by tensor (a multi-GB checkpoint
never exists twice in memory); they need only the key names up front, e.g. from the file header.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from onetrainer.util.keymaps.engine import Ignore, KeyMapError, KeyTable, StreamConverter
from onetrainer.util.keymaps.sd_tables import (
    CLIP_PREFIX,
    OPENCLIP_PREFIX,
    UNET_PREFIX,
    SdLayout,
    clip_rows,
    openclip_rows,
    unet_rows,
    vae_rows,
)

if TYPE_CHECKING:
    import torch

SD_FAMILIES = ("sd15", "sd2")
COMPONENTS = ("unet", "vae", "text_encoder")

V_PRED_MARKER = "v_pred"
"""An empty tensor ComfyUI writes into (and reads from) v-prediction checkpoints."""

# Keys real checkpoints carry that no diffusers component holds: the DDPM schedule buffers, EMA
# bookkeeping, ComfyUI's markers, CLIP's position ids (a non-persistent buffer in transformers).
# SD2's OpenCLIP tower also keeps its logit scale and a text projection the SD2 pipeline never uses.
READ_IGNORE = Ignore(
    exact=frozenset(
        {
            V_PRED_MARKER,
            "ztsnr",
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

# Detection: (key prefix, family), first match wins. Text-encoder layouts identify SD1/SD2/SDXL
# unambiguously; the DiT families are recognised so that a wrong-family file gets a clear message.
FAMILY_MARKERS = (
    ("conditioner.embedders.1.model.", "sdxl"),
    ("conditioner.embedders.0.model.", "sdxl-refiner"),
    ("cond_stage_model.model.", "sd2"),
    ("cond_stage_model.transformer.", "sd15"),
    ("model.diffusion_model.joint_blocks.", "sd3"),
    ("joint_blocks.", "sd3"),
    ("model.diffusion_model.double_blocks.", "flux"),
    ("double_blocks.", "flux"),
)
CONTEXT_DIM_FAMILY = {768: "sd15", 1024: "sd2", 2048: "sdxl"}
COMPONENT_MARKERS = (
    ("model.diffusion_model.", "unet"),
    ("first_stage_model.", "vae"),
    ("cond_stage_model.", "text_encoder"),
    ("conditioner.embedders.0.", "text_encoder"),
    ("conditioner.embedders.1.", "text_encoder_2"),
)


@functools.lru_cache(maxsize=2)
def clip_text_model_is_wrapped(with_projection: bool = False) -> bool:
    """Whether the installed transformers' CLIP text model keys start with `text_model.`.

    transformers >= 5.6 flattened CLIPTextModel, so its state dict says `encoder.layers.0...`; older
    versions, and CLIPTextModelWithProjection (SDXL's second encoder) in all versions, say
    `text_model.encoder.layers.0...`. Checked on a 1-layer model, once per process.
    """
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(
        vocab_size=8,
        hidden_size=4,
        intermediate_size=4,
        projection_dim=4,
        num_hidden_layers=1,
        num_attention_heads=1,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
    )
    model = (CLIPTextModelWithProjection if with_projection else CLIPTextModel)(config)
    return any(key.startswith("text_model.") for key in model.state_dict())


def _check_family(family: str) -> None:
    if family not in SD_FAMILIES:
        raise KeyMapError(f"no single-file table for family {family!r}", hint=f"expected one of {SD_FAMILIES}")


def single_file_table(layout: SdLayout, family: str, *, hf_text_model: bool | None = None) -> KeyTable:
    """The whole-pipeline table (diffusers side is `forward`).

    `hf_text_model` says whether diffusers text-encoder keys start with `text_model.`; None means
    "as the installed transformers names them".
    """
    _check_family(family)
    if hf_text_model is None:
        hf_text_model = clip_text_model_is_wrapped()
    te = clip_rows(hf_text_model) if family == "sd15" else openclip_rows(layout, hf_text_model)
    return KeyTable([*unet_rows(layout), *vae_rows(layout), *te])


def table_for_diffusers_keys(keys: Iterable[str], family: str) -> KeyTable:
    """The table for a model with these component-prefixed diffusers keys (names fix the layout)."""
    keys = list(keys)
    wrapped = any(key.startswith("text_encoder.text_model.") for key in keys)
    return single_file_table(SdLayout.from_diffusers_keys(keys), family, hf_text_model=wrapped)


def table_for_single_file_keys(keys: Iterable[str], family: str, *, hf_text_model: bool | None = None) -> KeyTable:
    """The table for a single file with these keys; look names up with `reverse=True`."""
    return single_file_table(SdLayout.from_single_file_keys(keys), family, hf_text_model=hf_text_model)


def to_single_file_stream(keys: Iterable[str], family: str) -> StreamConverter:
    """A converter for a model with these component-prefixed diffusers keys, fed one tensor at a time.

    Only names are needed up front (they fix the layout), e.g. from a safetensors header.
    """
    return StreamConverter(table_for_diffusers_keys(keys, family), ignore=WRITE_IGNORE)


def from_single_file_stream(
    keys: Iterable[str],
    family: str,
    *,
    text_encoder_layers: int | None = None,
    hf_text_model: bool | None = None,
) -> StreamConverter:
    """A converter from a single file with these keys to component-prefixed diffusers keys.

    See `single_file_to_diffusers` for the options.
    """
    keys = list(keys)
    table = table_for_single_file_keys(keys, family, hf_text_model=hf_text_model)
    ignore = read_ignore(SdLayout.from_single_file_keys(keys), text_encoder_layers)
    return StreamConverter(table, reverse=True, ignore=ignore)


def read_ignore(layout: SdLayout, text_encoder_layers: int | None = None) -> Ignore:
    """What reading a single file drops; with `text_encoder_layers`, also the encoder layers past it.

    SD2 checkpoints hold all 24 OpenCLIP layers, but SD2 conditions on the penultimate layer, so the
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
    family: str,
    *,
    v_prediction: bool = False,
) -> dict[str, torch.Tensor]:
    """Build the original single-file state dict from the three diffusers component state dicts.

    Tensors are not copied (views where a reshape is needed). `v_prediction` adds ComfyUI's empty
    `v_pred` marker tensor, the only place a single file can say it predicts v.
    """
    joined = _prefixed({"unet": unet_sd, "vae": vae_sd, "text_encoder": te_sd})
    out = to_single_file_stream(joined, family).convert(joined)
    if v_prediction:
        import torch

        out[V_PRED_MARKER] = torch.empty(0)
    return out


def single_file_to_diffusers(
    sd: Mapping[str, torch.Tensor],
    family: str | None = None,
    *,
    text_encoder_layers: int | None = None,
    hf_text_model: bool | None = None,
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Split a single file into (unet, vae, text_encoder) diffusers state dicts.

    `family=None` detects it from the keys. A component the file lacks comes back empty. Keys that
    fit no rule raise `KeyMapError` (all of them listed), except known non-weights (`READ_IGNORE`).
    `text_encoder_layers` keeps only that many encoder layers (23 for SD2, see `read_ignore`);
    `hf_text_model` chooses `text_model.`-prefixed encoder keys (None: as installed transformers).
    """
    if family is None:
        family = detect_single_file_family({key: tuple(t.shape) for key, t in sd.items()}).family
        if family not in SD_FAMILIES:
            raise KeyMapError(f"not an SD 1.x/2.x checkpoint (detected: {family or 'unknown'})")
    stream = from_single_file_stream(sd, family, text_encoder_layers=text_encoder_layers, hf_text_model=hf_text_model)
    joined = stream.convert(sd)
    parts: dict[str, dict[str, torch.Tensor]] = {name: {} for name in COMPONENTS}
    for key, tensor in joined.items():
        component, _, rest = key.partition(".")
        parts[component][rest] = tensor
    return parts["unet"], parts["vae"], parts["text_encoder"]


def _prefixed(components: Mapping[str, Mapping[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    return {f"{name}.{key}": tensor for name, sd in components.items() for key, tensor in sd.items()}


@dataclass(frozen=True)
class SingleFileInfo:
    """What key names and shapes say about a checkpoint; fields stay None where they say nothing."""

    family: str | None
    """"sd15", "sd2", "sdxl", "sdxl-refiner", "sd3", "flux", or None if not recognised."""
    components: frozenset[str]
    prediction_type: str | None
    """"v" if the file carries the `v_pred` marker; otherwise None: keys cannot tell epsilon from v."""
    context_dim: int | None
    in_channels: int | None
    """UNet input channels: 4 for text-to-image, 9 for inpainting models."""
    reason: str


def detect_single_file_family(keys_and_shapes: Mapping[str, Any]) -> SingleFileInfo:
    """Recognise a single-file checkpoint from its key names and shapes alone (no tensor data needed).

    Values may be shapes or `(dtype, shape)` pairs, as `read_safetensors_header` returns them.
    """
    shapes = {key: _shape(value) for key, value in keys_and_shapes.items()}
    components = frozenset(name for prefix, name in COMPONENT_MARKERS if any(k.startswith(prefix) for k in shapes))
    context_dim = next((s[1] for k, s in shapes.items() if k.endswith("attn2.to_k.weight") and len(s) == 2), None)
    conv_in = shapes.get(UNET_PREFIX + "input_blocks.0.0.weight")
    in_channels = conv_in[1] if conv_in is not None and len(conv_in) == 4 else None
    prediction = "v" if V_PRED_MARKER in shapes else None
    family, reason = _family(shapes, context_dim)
    return SingleFileInfo(family, components, prediction, context_dim, in_channels, reason)


def _shape(value: Any) -> tuple[int, ...]:
    if isinstance(value, tuple) and len(value) == 2 and isinstance(value[0], str):
        value = value[1]
    return tuple(int(n) for n in value)


def _family(shapes: Mapping[str, Sequence[int]], context_dim: int | None) -> tuple[str | None, str]:
    for prefix, family in FAMILY_MARKERS:
        if any(key.startswith(prefix) for key in shapes):
            return family, f"keys under {prefix!r}"
    if context_dim in CONTEXT_DIM_FAMILY:
        return CONTEXT_DIM_FAMILY[context_dim], f"cross-attention width {context_dim}"
    if any(key.startswith(UNET_PREFIX + "label_emb.") for key in shapes):
        return "sdxl", "UNet with an added-conditioning embedding (label_emb)"
    proj_in = next((s for k, s in shapes.items() if k.startswith(UNET_PREFIX) and k.endswith("proj_in.weight")), None)
    if proj_in is not None:
        # SD2 UNets project into attention with Linear layers, SD1 with 1x1 convs.
        return ("sd2", "linear attention projections") if len(proj_in) == 2 else ("sd15", "conv attention projections")
    return None, "no known UNet, text-encoder or DiT keys"
