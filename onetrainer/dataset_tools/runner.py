"""The loop both tools share: decode a batch, run the model once on it, write one file per image.

Images are decoded batch by batch, so a folder of thousands never sits in memory at once, and an
unreadable file costs only its own slot: it is recorded with its reason and the rest of its batch
still runs.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from onetrainer.data_loader.files import ImageTooLarge, limit_pixels, sidecar_sharers
from onetrainer.dataset_tools.files import UnreadableImage, find_images, load_rgb
from onetrainer.dataset_tools.progress import ProgressCallback, ToolProgress, ToolSummary
from onetrainer.util.config.data import PILLOW_PIXEL_LIMIT
from onetrainer.util.errors import RuntimeFailure

if TYPE_CHECKING:
    from PIL import Image

R = TypeVar("R")


def select_images(
    directory: Path, *, recursive: bool, wanted: Callable[[Path], bool], sidecar: Callable[[Path], Path]
) -> tuple[list[Path], ToolSummary]:
    """(the images under `directory` that `wanted` selects, a summary counting them all and the rest as kept).

    Images that would write one `sidecar` file (`cat.png` and `cat.jpg` both `cat.txt`) are skipped, each
    reported by path: one would overwrite the other's file (or, adding, merge both into it), and training
    would read that file for both images.
    """
    images = find_images(directory, recursive=recursive)
    clashes = {image: group for group in sidecar_sharers(images) for image in group}
    todo = [image for image in images if image not in clashes and wanted(image)]
    selected = set(todo)
    summary = ToolSummary(
        found=len(images),
        kept=[image for image in images if image not in selected and image not in clashes],
        failed=[(image, _clash(image, group, sidecar(image))) for image, group in clashes.items()],
    )
    return todo, summary


def _clash(image: Path, group: list[Path], target: Path) -> str:
    others = ", ".join(other.name for other in group if other != image)
    return f"{others} would write the same {target.name}, so none of them is handled: rename all but one"


def run_batches(
    images: Sequence[Path],
    *,
    batch_size: int,
    process: Callable[[list[Image.Image]], list[R]],
    write: Callable[[Path, Image.Image, R], Path],
    summary: ToolSummary,
    on_progress: ProgressCallback,
) -> ToolSummary:
    """Run `process` over `images` in batches and `write` each result; fills and returns `summary`.

    `write(image_path, image, result)` returns the path it wrote, or raises `UnreadableImage` when an
    input it needs (an existing mask) cannot be read; an `OSError` (its output cannot be written) fails
    that image alone, reported by path like an unreadable one. `summary.seconds` covers this loop
    only (not model loading), so images/s measures the work itself.
    """
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    limit_pixels(PILLOW_PIXEL_LIMIT)  # as training does: an image above it is skipped by path, with no raw warning
    start = time.perf_counter()
    done = 0
    total = len(images)
    on_progress(ToolProgress(0, total))
    for offset in range(0, total, batch_size):
        paths = images[offset : offset + batch_size]
        decoded: list[tuple[Path, Image.Image]] = []
        for path in paths:
            try:
                decoded.append((path, load_rgb(path)))
            except UnreadableImage as error:
                summary.failed.append((path, _reason(error)))
        if decoded:
            results = process([image for _, image in decoded])
            if len(results) != len(decoded):
                raise RuntimeFailure(f"the model returned {len(results)} results for {len(decoded)} images")
            for (path, image), result in zip(decoded, results, strict=True):
                try:
                    summary.written.append(write(path, image, result))
                except UnreadableImage as error:
                    summary.failed.append((path, f"{error.path.name}: {_reason(error)}"))
                except OSError as error:  # one unwritable output (a folder in its place, a full disk) ends only its own
                    summary.failed.append((path, f"cannot write its output: {error.strerror or error}"))
        done += len(paths)
        on_progress(ToolProgress(done, total, paths[-1]))
    summary.processed, summary.seconds = done, time.perf_counter() - start
    return summary


TOO_LARGE_REMEDY = (
    "(Pillow's guard against decompression bombs, fixed for caption and mask); downscale the image to use it"
)
"""Where the tools' pixel limit comes from: unlike a run config, they have no setting that raises it."""


def _reason(error: UnreadableImage) -> str:
    """Why an image was skipped, in the tools' words (training's names a run config's setting)."""
    return error.reason_with(TOO_LARGE_REMEDY) if isinstance(error, ImageTooLarge) else error.reason
