"""Which files the folder tools work on, where their sidecars go, and how images are decoded.

The data loader owns the conventions (which files are training images, `img.txt` captions,
`img-masklabel.png` masks, decoding odd files to upright RGB); the tools reuse them, so they caption
and mask exactly the images training will use. What is added here: a clear error for a wrong folder,
and sidecar paths for files that do not exist yet.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from onetrainer.data_loader.files import MASK_SUFFIX, UnreadableImage, decode_image, list_images
from onetrainer.util.errors import UserError
from onetrainer.util.missing import missing_path

if TYPE_CHECKING:
    from PIL import Image

__all__ = ["UnreadableImage", "caption_path", "find_images", "load_rgb", "mask_path"]

WHITE = (255, 255, 255)
FOLDER_ARGUMENT = "the DIR argument"


def find_images(directory: Path, *, recursive: bool) -> list[Path]:
    """Images under `directory` in a stable (sorted) order, so runs and batches are reproducible."""
    if not directory.exists():
        raise missing_path(directory, what="folder", where=FOLDER_ARGUMENT)
    if not directory.is_dir():
        raise UserError(
            f"expected a folder of images, got a file: {directory}",
            where=FOLDER_ARGUMENT,
            hint=f"Pass the folder that holds the images: {directory.parent}",
        )
    return list_images(directory, recursive=recursive)


def caption_path(image: Path) -> Path:
    return image.with_suffix(".txt")


def mask_path(image: Path) -> Path:
    return image.with_name(image.stem + MASK_SUFFIX)


def load_rgb(path: Path) -> Image.Image:
    """Decode as users see the image: EXIF rotation applied, transparency flattened onto white."""
    return decode_image(path, WHITE)[0]
