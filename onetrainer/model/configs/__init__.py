"""Architecture configs shipped with the package, so a single-file checkpoint loads without a download.

An original single file holds weights only; the shapes alone cannot say how many attention heads a
block has or which scheduler the model was trained with. Each folder here is laid out like a diffusers
pipeline (model_index.json, one config per component, scheduler/) with the values of the official
model cards' config files, and no weights and no tokenizer (the tokenizer is data, not architecture,
and is large). A family spec names its folder per prediction type (`FamilySpec.shipped_config`).
"""

from __future__ import annotations

from pathlib import Path

from onetrainer.util.errors import UserError

CONFIGS_DIR = Path(__file__).resolve().parent


def shipped_configs() -> list[str]:
    return sorted(path.name for path in CONFIGS_DIR.iterdir() if (path / "model_index.json").is_file())


def config_dir(name: str) -> Path:
    """The diffusers-layout folder of one shipped architecture (usable as `from_single_file(config=...)`)."""
    if name not in shipped_configs():
        raise UserError(f"no shipped architecture config {name!r}; shipped: {', '.join(shipped_configs())}")
    return CONFIGS_DIR / name
