"""The SD 1.x / 2.x loader: the shared diffusers loader with the shared single-file reader.

Their single files hold the UNet, VAE and CLIP (1.x) or OpenCLIP (2.x) text encoder in the original
layout (`FamilySpec.single_file`); the architecture comes from the configs shipped per prediction
type, so an unmarked 2.x file is taken as the 768 px v-prediction model unless the user says otherwise.
"""

from __future__ import annotations

from onetrainer.model_loader.pipeline import DiffusersLoader
from onetrainer.model_loader.single_file import read_single_file
from onetrainer.util.registry import ModuleKind, register

__all__ = ["read_single_file", "stable_diffusion_loader"]


@register(ModuleKind.LOADER, "sd15", "sd2")
def stable_diffusion_loader() -> DiffusersLoader:
    return DiffusersLoader(read_single_file=read_single_file)
