"""Load a replacement VAE (a fine-tuned decoder such as sd-vae-ft-mse) to use instead of the base model's.

Accepted: a diffusers VAE folder (config.json + weights) or a pipeline folder with `vae/`, a hub id of
either, or a single weights file in the diffusers or the original (LDM) key layout, with or without
the `first_stage_model.` prefix. A single file takes its architecture from the base model's VAE, and
every source its latent scaling and shift (`load_vae`).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from onetrainer.model_loader.checkpoint import WeightsFile
from onetrainer.model_loader.hub import HUB, TINY, hub_errors, source_kind
from onetrainer.model_loader.single_file import assign_state_dict, empty_weights
from onetrainer.util.errors import UserError
from onetrainer.util.keymaps.engine import KeyTable, convert
from onetrainer.util.keymaps.ldm_tables import VAE_PREFIX, SdLayout, vae_rows

if TYPE_CHECKING:
    import torch
    from diffusers import AutoencoderKL


def load_vae(source: str, base_config: dict[str, Any], dtype: torch.dtype) -> AutoencoderKL:
    """The replacement VAE, with the base model's latent scaling and shift: they belong to the latents the
    denoiser was trained on (A1111 and ComfyUI take them from the model, not the VAE), and a VAE folder's own
    config often says SD 1.x's 0.18215 whatever the VAE (one converted without its config)."""
    vae = _load_vae(source, base_config, dtype)
    scaling = {key: base_config.get(key) for key in ("scaling_factor", "shift_factor") if key in base_config}
    if any(getattr(vae.config, key, None) != value for key, value in scaling.items()):
        vae.register_to_config(**scaling)
    return vae


def _load_vae(source: str, base_config: dict[str, Any], dtype: torch.dtype) -> AutoencoderKL:
    from diffusers import AutoencoderKL

    kind = source_kind(source, where="model.vae")
    if kind == TINY:
        raise UserError("a tiny model cannot serve as a VAE override", hint="Pass a VAE folder, file or hub id.")
    if kind == HUB:
        with hub_errors(source, "VAE", where="model.vae"):
            try:
                return AutoencoderKL.from_pretrained(source, torch_dtype=dtype)
            except OSError:
                return AutoencoderKL.from_pretrained(source, subfolder="vae", torch_dtype=dtype)
    path = Path(source).expanduser()
    if path.is_dir():
        folder = path / "vae" if (path / "vae" / "config.json").is_file() else path
        if not (folder / "config.json").is_file():
            raise UserError(f"{path} is not a diffusers VAE folder (no config.json)")
        with hub_errors(str(folder), "VAE", where="model.vae", hub=False):
            return AutoencoderKL.from_pretrained(folder, torch_dtype=dtype)
    return _vae_from_file(path, base_config, dtype)


def _vae_from_file(path: Path, base_config: dict[str, Any], dtype: torch.dtype) -> AutoencoderKL:
    from diffusers import AutoencoderKL

    with WeightsFile(path) as weights:
        state = {key: weights.tensor(key).to(dtype) for key in weights}
    state = {key.removeprefix(VAE_PREFIX): t for key, t in state.items() if not key.startswith("loss.")}
    if any(key.startswith("encoder.down.") for key in state):
        ldm = {VAE_PREFIX + key: t for key, t in state.items()}
        table = KeyTable(vae_rows(SdLayout.from_single_file_keys(ldm)))
        state = {key.removeprefix("vae."): t for key, t in convert(table, ldm, reverse=True).items()}
    with empty_weights():
        vae = AutoencoderKL.from_config(base_config)
    assign_state_dict(
        vae,
        state,
        what=f"{path.name} is not a VAE for this model",
        hint="The VAE file must match the base model's VAE architecture (SD 1.x/2.x VAEs are interchangeable).",
    )
    return vae.eval()
