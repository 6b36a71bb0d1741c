"""Masking backends: each turns a batch of images and the prompts into one 0/1 mask per image.

A backend applies its own threshold (a probability for CLIPSeg, a colour distance for `color`);
expanding, smoothing and combining with an existing mask are shared and live in `mask.py`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    import numpy as np
    from PIL import Image

    from onetrainer.dataset_tools.mask import MaskRequest

CLIPSEG_MODELS: dict[str, str] = {"clipseg": "CIDAS/clipseg-rd64-refined"}
COLOR = "color"
DEFAULT_THRESHOLDS: dict[str, float] = {"clipseg": 0.3, COLOR: 0.2}
"""Used when `--threshold` is not given; any other model (a CLIPSeg path or hub id) uses clipseg's.

`color`'s 0.2 is a colour distance (see `maskers.color`): it takes a shade of the colour named (the
example shapes' red 220,30,30 is 0.12 from `#ff0000`; Pillow's `green`, `blue` and `yellow` are
0.14-0.17 from theirs) and leaves other hues out (orange is 0.37 from red)."""


class Masker(Protocol):
    def masks(self, images: list[Image.Image]) -> list[np.ndarray]:
        """One float32 array per image, shaped (height, width), holding 0.0 or 1.0."""
        ...


def default_threshold(model: str) -> float:
    return DEFAULT_THRESHOLDS.get(model, DEFAULT_THRESHOLDS["clipseg"])


def check_masker(model: str, prompts: list[str]) -> None:
    """Refuse a `--model` that names nothing, or a colour that is none, without loading anything."""
    from onetrainer.dataset_tools.sources import check_model_name

    check_model_name(model, [*CLIPSEG_MODELS, COLOR], what="mask model")
    if model == COLOR:
        from onetrainer.dataset_tools.maskers.color import parse_colour

        for prompt in prompts:
            parse_colour(prompt)


def open_masker(request: MaskRequest) -> Masker:
    """The backend `request.model` names; only a model backend resolves (and imports torch for) a device."""
    threshold = request.threshold if request.threshold is not None else default_threshold(request.model)
    if request.model == COLOR:
        from onetrainer.dataset_tools.maskers.color import ColorMasker

        return ColorMasker.from_prompts(request.prompts, threshold=threshold)

    from onetrainer.dataset_tools.maskers.clipseg import ClipSegMasker
    from onetrainer.util.devices import resolve_device, torch_dtype

    device = resolve_device(request.device)
    return ClipSegMasker.load(
        CLIPSEG_MODELS.get(request.model, request.model),
        prompts=request.prompts,
        threshold=threshold,
        device=device,
        dtype=torch_dtype(request.dtype, device),
    )
