"""The SDXL loader: the shared diffusers loader with the shared single-file reader (SGM layout).

Everything SDXL-specific about its files is in its spec: the SGM key tables, the shipped architecture
(used when a single file comes without `model.config`), and where a single file's two tokenizers are
found (the SDXL base repo's `tokenizer/` and `tokenizer_2/` in the HF cache, the second padding with "!").
"""

from __future__ import annotations

from onetrainer.model_loader.pipeline import DiffusersLoader
from onetrainer.model_loader.single_file import read_single_file
from onetrainer.util.registry import ModuleKind, register


@register(ModuleKind.LOADER, "sdxl")
def sdxl_loader() -> DiffusersLoader:
    return DiffusersLoader(read_single_file=read_single_file)
