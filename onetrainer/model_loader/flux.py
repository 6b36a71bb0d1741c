"""The FLUX.1 loader: the shared diffusers loader with the shared single-file reader.

A diffusers folder or hub id (`black-forest-labs/FLUX.1-dev`) loads whole. BFL's single file holds the
transformer alone (bare `double_blocks.*` keys), read tensor by tensor through the BFL table in the
family spec and cast as it is read (a bf16 load never holds an fp32 copy); the text encoders, their
tokenizers, the VAE and the scheduler come from `model.config`, a diffusers folder or hub id of the same
model type, of which only those parts are read. A ComfyUI checkpoint (the transformer under
`model.diffusion_model.`) also holds some or all of the VAE and text encoders, which are read from it;
`model.config` supplies the rest, and any part stored in ComfyUI's scaled fp8 format. `model.vae` may
replace the VAE (BFL's `ae.safetensors` included).
"""

from __future__ import annotations

from onetrainer.model_loader.pipeline import DiffusersLoader
from onetrainer.model_loader.single_file import read_single_file
from onetrainer.util.registry import ModuleKind, register


@register(ModuleKind.LOADER, "flux-dev", "flux-schnell")
def flux_loader() -> DiffusersLoader:
    return DiffusersLoader(read_single_file=read_single_file)
