"""Captioning backends and the choice between them.

`--model` takes a short name (`blip`, `blip2`, `florence2`, `wd14`), `wd14:ORG/NAME` for another
WD-style tagger repo, a local path, or a hub id. Local paths holding a `model.onnx` (or naming an
`.onnx` file) are taggers; everything else is a transformers image-to-text model.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from PIL import Image

    from onetrainer.dataset_tools.caption import CaptionRequest

TRANSFORMERS_MODELS: dict[str, str] = {
    "blip": "Salesforce/blip-image-captioning-large",
    "blip2": "Salesforce/blip2-opt-2.7b",
    "florence2": "florence-community/Florence-2-large",
}
TAGGER_MODELS: dict[str, str] = {"wd14": "SmilingWolf/wd-v1-4-vit-tagger-v2"}
TAGGER_PREFIX = "wd14:"


class Captioner(Protocol):
    def caption(self, images: list[Image.Image]) -> list[str]:
        """One caption per image, in order."""
        ...


def is_tagger_source(model: str) -> bool:
    if model in TAGGER_MODELS or model.startswith(TAGGER_PREFIX):
        return True
    path = Path(model).expanduser()
    return path.suffix == ".onnx" or (path.is_dir() and (path / "model.onnx").is_file())


def check_captioner(model: str) -> None:
    """Refuse a `--model` that names nothing (a typo, a missing path) without loading anything."""
    from onetrainer.dataset_tools.sources import check_model_name

    if model.startswith(TAGGER_PREFIX):
        check_model_name(model.removeprefix(TAGGER_PREFIX), [], what="tagger")
    else:
        check_model_name(model, [*TRANSFORMERS_MODELS, *TAGGER_MODELS], what="captioning model")


def open_captioner(request: CaptionRequest, device: str) -> Captioner:
    """Load the backend `request.model` names onto `device` (slow: this loads the weights)."""
    model = request.model
    if is_tagger_source(model):
        from onetrainer.dataset_tools.captioners.wd14 import open_tagger

        source = TAGGER_MODELS.get(model, model.removeprefix(TAGGER_PREFIX))
        return open_tagger(source, device=device, thresholds=request.tagger)

    from onetrainer.dataset_tools.captioners.image_to_text import ImageToTextCaptioner
    from onetrainer.util.devices import torch_dtype

    return ImageToTextCaptioner.load(
        TRANSFORMERS_MODELS.get(model, model),
        device=device,
        dtype=torch_dtype(request.dtype, device),
        prompt=request.prompt,
        max_new_tokens=request.max_new_tokens,
    )
