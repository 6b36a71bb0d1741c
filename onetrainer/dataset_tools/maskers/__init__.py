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
DEFAULT_THRESHOLDS: dict[str, float] = {"clipseg": 0.3, "color": 0.1}
"""Used when `--threshold` is not given; any other model (a CLIPSeg path or hub id) uses clipseg's."""


class Masker(Protocol):
    def masks(self, images: list[Image.Image]) -> list[np.ndarray]:
        """One float32 array per image, shaped (height, width), holding 0.0 or 1.0."""
        ...


def default_threshold(model: str) -> float:
    return DEFAULT_THRESHOLDS.get(model, DEFAULT_THRESHOLDS["clipseg"])


def open_masker(request: MaskRequest) -> Masker:
    """The backend `request.model` names; only a model backend resolves (and imports torch for) a device."""
    threshold = request.threshold if request.threshold is not None else default_threshold(request.model)
    if request.model == "color":
        from onetrainer.dataset_tools.maskers.color import ColorMasker

        return ColorMasker.from_prompts(request.prompts, threshold=threshold)

    from onetrainer.dataset_tools.maskers.clipseg import ClipSegMasker
    from onetrainer.dataset_tools.sources import resolve_device, resolve_dtype

    device = resolve_device(request.device)
    return ClipSegMasker.load(
        CLIPSEG_MODELS.get(request.model, request.model),
        prompts=request.prompts,
        threshold=threshold,
        device=device,
        dtype=resolve_dtype(request.dtype, device),
    )
