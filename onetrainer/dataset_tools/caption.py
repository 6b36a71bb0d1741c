"""`caption_folder`: write `name.txt` beside every image in a folder.

Modes decide per image: `replace` overwrites, `fill` captions only images without a (non-empty)
caption, `add` appends the new caption as another line (caption files hold one caption per line; the
data loader picks one at random per use). The prefix and suffix are joined to the model's text as
typed, so `--prefix "photo of sks, "` controls its own separator.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from onetrainer.dataset_tools.captioners.wd14 import TaggerSettings
from onetrainer.dataset_tools.files import caption_path
from onetrainer.dataset_tools.modes import CaptionMode
from onetrainer.dataset_tools.progress import ProgressCallback, ToolSummary, no_progress
from onetrainer.dataset_tools.runner import run_batches, select_images
from onetrainer.util.atomic import atomic_write_text
from onetrainer.util.errors import UserError

if TYPE_CHECKING:
    from PIL import Image


@dataclass(frozen=True)
class CaptionRequest:
    directory: Path
    model: str = "blip"
    mode: CaptionMode = CaptionMode.FILL
    prefix: str = ""
    suffix: str = ""
    recursive: bool = False
    batch_size: int = 4
    device: str = "auto"
    dtype: str = "auto"
    """fp32, fp16, bf16 or auto (`util.devices`)."""
    prompt: str | None = None
    """Text the model starts from: BLIP and BLIP-2 continue it, Florence-2 reads it as its task token
    (default `<DETAILED_CAPTION>`). It is not written into the caption; `prefix` is."""
    max_new_tokens: int = 75
    tagger: TaggerSettings = field(default_factory=TaggerSettings)


def read_caption(path: Path) -> str:
    if not path.is_file():
        return ""
    return path.read_text(encoding="utf-8", errors="replace").strip()


def _kept_caption(path: Path) -> str:
    """The caption a new one is added to, read strictly: one that is not UTF-8 text would come back with its
    bytes replaced, so its image fails instead (reported by path) and the file stays as it is."""
    from onetrainer.data_loader.files import UnreadableImage

    if not path.is_file():
        return ""
    try:
        return path.read_text(encoding="utf-8").strip()
    except UnicodeDecodeError:
        raise UnreadableImage(path, "not UTF-8 text, so nothing was added to it") from None


def merged_caption(existing: str, new: str, mode: CaptionMode) -> str:
    """The file's new content (without the trailing newline)."""
    if mode is CaptionMode.ADD and existing:
        return f"{existing}\n{new}"
    return new


def needs_caption(image: Path, mode: CaptionMode) -> bool:
    return mode is not CaptionMode.FILL or not read_caption(caption_path(image))


def _validate(request: CaptionRequest) -> None:
    """Every argument, before the folder is read: a wrong one fails the same with or without images."""
    from onetrainer.dataset_tools.captioners import check_captioner
    from onetrainer.util.devices import parse_dtype

    check_captioner(request.model)
    parse_dtype(request.dtype)
    if request.batch_size < 1:
        raise UserError("--batch-size must be at least 1")
    if request.max_new_tokens < 1:
        raise UserError("--max-new-tokens must be at least 1")
    for name, value in (
        ("--general-threshold", request.tagger.general_threshold),
        ("--character-threshold", request.tagger.character_threshold),
    ):
        if not 0.0 <= value <= 1.0:
            raise UserError(f"{name} must be between 0 and 1, got {value}")


def caption_folder(request: CaptionRequest, on_progress: ProgressCallback = no_progress) -> ToolSummary:
    """Caption every image under `request.directory` that the mode selects; returns what happened.

    The model loads only when some image needs a caption, so a `fill` run over a finished folder is
    instant.
    """
    from onetrainer.dataset_tools.captioners import open_captioner
    from onetrainer.util.devices import resolve_device

    _validate(request)
    device = resolve_device(request.device)
    todo, summary = select_images(
        request.directory,
        recursive=request.recursive,
        wanted=lambda image: needs_caption(image, request.mode),
        sidecar=caption_path,
    )
    if not todo:
        return summary
    captioner = open_captioner(request, device)

    def write(image_path: Path, _: Image.Image, text: str) -> Path:
        target = caption_path(image_path)
        new = f"{request.prefix}{text}{request.suffix}".strip()
        existing = _kept_caption(target) if request.mode is CaptionMode.ADD else ""
        atomic_write_text(target, merged_caption(existing, new, request.mode) + "\n")
        return target

    return run_batches(
        todo,
        batch_size=request.batch_size,
        process=captioner.caption,
        write=write,
        summary=summary,
        on_progress=on_progress,
    )
