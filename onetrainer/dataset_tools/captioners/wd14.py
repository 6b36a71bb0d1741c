"""WD-style ONNX taggers (SmilingWolf's wd-v1-4 / wd-v3 family and lookalikes) through onnxruntime.

Such a tagger is a `model.onnx` taking NHWC float images in BGR order with 0-255 values, padded to a
white square, plus a `selected_tags.csv` (`tag_id,name,category,count`) whose rows match the output
columns. Category 0 is a general tag, 4 a character, 9 a rating (never written into captions).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from onetrainer.dataset_tools.sources import load_from_hub_or_path, local_path
from onetrainer.util.errors import UserError

if TYPE_CHECKING:
    import numpy as np
    from PIL import Image

MODEL_FILE = "model.onnx"
TAGS_FILE = "selected_tags.csv"
GENERAL, CHARACTER = 0, 4


@dataclass(frozen=True)
class TaggerSettings:
    general_threshold: float = 0.35
    character_threshold: float = 0.85
    exclude: frozenset[str] = field(default_factory=frozenset)
    """Tags never written, in `normalise_tag` form."""


def normalise_tag(text: str) -> str:
    """`Long_Hair` and `long hair` name the same tag."""
    return " ".join(text.replace("_", " ").lower().split())


@dataclass(frozen=True)
class Tag:
    name: str
    category: int

    @property
    def display(self) -> str:
        """Underscores become spaces, except in short emoticons such as `^_^`."""
        return self.name.replace("_", " ") if len(self.name) > 3 else self.name


def read_tags(path: Path) -> list[Tag]:
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
        return [Tag(row["name"], int(row["category"])) for row in rows]
    except (KeyError, ValueError, TypeError) as error:
        raise UserError(
            f"{path} is not a tagger tag list: {error}", hint="It needs the columns name and category."
        ) from None


def tagger_files(source: str) -> tuple[Path, Path]:
    """(model.onnx, selected_tags.csv) for a local file/folder or a hub repo (through the hub cache)."""
    path = local_path(source)
    if path is not None:
        model = path / MODEL_FILE if path.is_dir() else path
        tags = model.with_name(TAGS_FILE)
        for required in (model, tags):
            if not required.is_file():
                raise UserError(
                    f"tagger file missing: {required}", hint=f"A tagger needs {MODEL_FILE} and {TAGS_FILE}."
                )
        return model, tags
    from huggingface_hub import hf_hub_download

    def download(name: str) -> Path:
        return Path(load_from_hub_or_path(lambda repo: hf_hub_download(repo, name), source, what="tagger"))

    return download(MODEL_FILE), download(TAGS_FILE)


def open_tagger(source: str, *, device: str, thresholds: TaggerSettings) -> OnnxTagger:
    try:
        import onnxruntime
    except ImportError:
        raise UserError(
            "the wd14 tagger needs onnxruntime, which is not installed",
            hint="Install the caption extra: pip install 'onetrainer[caption]'.",
        ) from None
    model_file, tags_file = tagger_files(source)
    providers: list[Any] = ["CPUExecutionProvider"]
    if device.startswith("cuda") and "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        index = int(device.partition(":")[2] or 0)  # the GPU `--device cuda:N` names, not always the first
        providers.insert(0, ("CUDAExecutionProvider", {"device_id": index}))
    try:
        session = onnxruntime.InferenceSession(str(model_file), providers=providers)
    except Exception as error:  # noqa: BLE001 - onnxruntime raises its own untyped errors for bad files
        raise UserError(f"cannot load the tagger {model_file}: {error}") from None
    return OnnxTagger(session, read_tags(tags_file), thresholds)


class OnnxTagger:
    def __init__(self, session: Any, tags: list[Tag], settings: TaggerSettings) -> None:
        model_input = session.get_inputs()[0]
        shape = model_input.shape
        if len(shape) != 4 or shape[3] != 3 or not isinstance(shape[1], int):
            raise UserError(f"unsupported tagger input shape {shape}", hint="Expected NHWC images with 3 channels.")
        outputs = session.get_outputs()[0].shape
        if isinstance(outputs[-1], int) and outputs[-1] != len(tags):
            raise UserError(f"the tagger outputs {outputs[-1]} scores but its tag list has {len(tags)} tags")
        self.session = session
        self.input_name = model_input.name
        self.size = shape[1]
        self.tags = tags
        self.settings = settings

    def caption(self, images: list[Image.Image]) -> list[str]:
        import numpy as np

        batch = np.stack([self._prepare(image) for image in images])
        scores = self.session.run(None, {self.input_name: batch})[0]
        return [self._select(row) for row in scores]

    def _prepare(self, image: Image.Image) -> np.ndarray:
        import numpy as np
        from PIL import Image

        side = max(image.size)
        square = Image.new("RGB", (side, side), (255, 255, 255))
        square.paste(image, ((side - image.width) // 2, (side - image.height) // 2))
        resized = square.resize((self.size, self.size), Image.Resampling.BICUBIC)
        return np.asarray(resized, dtype=np.float32)[:, :, ::-1].copy()

    def _select(self, scores: np.ndarray) -> str:
        """Characters first, then general tags, each by falling score."""
        limits = {GENERAL: self.settings.general_threshold, CHARACTER: self.settings.character_threshold}
        chosen: list[tuple[int, float, str]] = []
        for tag, score in zip(self.tags, scores.tolist(), strict=True):
            limit = limits.get(tag.category)
            if limit is None or score < limit or normalise_tag(tag.name) in self.settings.exclude:
                continue
            chosen.append((0 if tag.category == CHARACTER else 1, -score, tag.display))
        return ", ".join(display for _, _, display in sorted(chosen))
