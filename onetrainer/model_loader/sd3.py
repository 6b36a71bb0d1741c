"""The SD 3 loader: the shared diffusers loader with the shared single-file reader, T5 optional.

A diffusers folder or hub id (`stabilityai/stable-diffusion-3.5-large`) loads whole; one whose
`model_index.json` has no `text_encoder_3` loads without T5, as diffusers' pipeline does. Stability's /
ComfyUI's checkpoints are read tensor by tensor through the SD 3 table in the family spec; the parts a
file lacks (Stability's release files hold no text encoders) come, with their tokenizers, from
`model.config`, and without one the architecture shipped for the model type describes the file.
`model.options.t5: false` leaves T5 out of any source (`FamilySpec.leaves_out`), so it is never read.
"""

from __future__ import annotations

from onetrainer.model_loader.pipeline import DiffusersLoader
from onetrainer.model_loader.single_file import read_single_file
from onetrainer.util.registry import ModuleKind, register


@register(ModuleKind.LOADER, "sd35-large", "sd35-medium", "sd3-medium")
def sd3_loader() -> DiffusersLoader:
    return DiffusersLoader(read_single_file=read_single_file)
