"""Architecture configs shipped with the package, so a single-file checkpoint loads without a download.

An original single file holds weights only; the shapes alone cannot say how many attention heads a
block has or which scheduler the model was trained with. Each folder here is laid out like a diffusers
pipeline (model_index.json, unet/, vae/, text_encoder/, scheduler/ configs) with the values of the
official model cards' config files, and no weights and no tokenizer (the tokenizer is data, not
architecture, and is large).

- `sd15`: stable-diffusion-v1-5 (512 px, epsilon).
- `sd2-512`: stable-diffusion-2-1-base (512 px, epsilon); 2.0-base has the same architecture.
- `sd2-768-v`: stable-diffusion-2-1 (768 px, v-prediction); 2.0-768 has the same architecture.
"""

from __future__ import annotations

from pathlib import Path

from onetrainer.util.enums import ModelType

CONFIGS_DIR = Path(__file__).resolve().parent
VARIANTS = ("sd15", "sd2-512", "sd2-768-v")
COMPONENT_FILES = {
    "unet": "unet/config.json",
    "vae": "vae/config.json",
    "text_encoder": "text_encoder/config.json",
    "scheduler": "scheduler/scheduler_config.json",
}


def variant_for(model_type: ModelType, *, v_prediction: bool) -> str:
    """The shipped architecture of a family: SD 2.x's 768 px models predict v, its 512 px ones epsilon."""
    if model_type is ModelType.SD15:
        return "sd15"
    if model_type is ModelType.SD2:
        return "sd2-768-v" if v_prediction else "sd2-512"
    raise ValueError(f"no shipped architecture config for {model_type.value}")


def config_dir(variant: str) -> Path:
    """The diffusers-layout folder of one shipped variant (usable as `from_single_file(config=...)`)."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown shipped config {variant!r}; expected one of {', '.join(VARIANTS)}")
    return CONFIGS_DIR / variant
