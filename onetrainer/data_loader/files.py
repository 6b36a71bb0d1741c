"""Files in a concept folder: which are images, their sidecars, sizes, and decoding to plain RGB.

Users' folders hold whatever their cameras and editors wrote: CMYK and palette files, 16-bit PNGs,
EXIF-rotated JPEGs, transparency, animations, and the odd broken file. Everything downstream works
on one shape (8-bit RGB plus an optional alpha), so every conversion happens here, once, and a file
that cannot be read raises `UnreadableImage` with a reason a person can act on.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from PIL import Image

MASK_MARKER = "-masklabel"
MASK_SUFFIX = f"{MASK_MARKER}.png"
SIDECAR_MARKERS = (MASK_MARKER, "-condlabel")
"""Stems ending in these are sidecars of another image, never training images themselves."""

_NOT_IMAGES = frozenset({".bufr", ".grib", ".h5", ".hdf", ".eps", ".ps", ".mpeg", ".mpg", ".wmf", ".emf"})
"""Extensions Pillow registers but cannot decode without external plugins or programs."""

_EXIF_ORIENTATION = 0x0112
_TRANSPOSED_ORIENTATIONS = frozenset({5, 6, 7, 8})


class UnreadableImage(Exception):
    """An image that cannot be used; `reason` says why in words fit for a report."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


@dataclass(frozen=True)
class ImageHeader:
    """What the header says: the displayed size (EXIF orientation applied), without decoding pixels."""

    height: int
    width: int
    frames: int = 1


@cache
def image_extensions() -> frozenset[str]:
    """Every extension Pillow can open (png, jpg, webp, bmp, tiff, gif, ...), lower-case with the dot."""
    from PIL import Image

    return frozenset(ext for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN) - _NOT_IMAGES


def is_training_image(path: Path) -> bool:
    if path.name.startswith(".") or path.suffix.lower() not in image_extensions():
        return False
    return not path.stem.endswith(SIDECAR_MARKERS)


def is_broken_link(path: Path) -> bool:
    return path.is_symlink() and not path.exists()


def check_link(path: Path) -> None:
    """Raise `UnreadableImage` for a symbolic link whose target is gone (a moved or unmounted file)."""
    if is_broken_link(path):
        raise UnreadableImage(path, f"broken symbolic link: its target {os.readlink(path)} does not exist")


def list_images(root: Path, *, recursive: bool) -> list[Path]:
    """Training images under `root`, sorted; hidden files and folders (ours included) are skipped.

    A symbolic link whose target is gone is listed too, so that the scan reports it as skipped
    instead of the image vanishing from the dataset without a word.
    """
    found: list[Path] = []
    if recursive:
        for directory, subdirs, files in os.walk(root):
            subdirs[:] = sorted(d for d in subdirs if not d.startswith("."))
            found.extend(Path(directory) / name for name in files)
    else:
        found = [entry for entry in root.iterdir() if entry.is_file() or is_broken_link(entry)]
    return sorted(path for path in found if is_training_image(path))


def mask_path_for(image: Path) -> Path | None:
    candidate = image.with_name(f"{image.stem}{MASK_SUFFIX}")
    return candidate if candidate.is_file() else None


def caption_path_for(image: Path) -> Path | None:
    candidate = image.with_suffix(".txt")
    return candidate if candidate.is_file() else None


def limit_pixels(limit: int | None) -> None:
    """Refuse images above `limit` pixels (None: no limit) as possible decompression bombs.

    Pillow's guard is process-wide: it warns above `Image.MAX_IMAGE_PIXELS` and raises only above
    twice that. The warning is turned into an error here, so an image over the limit is refused once,
    where `_open` reports it as skipped, and no raw warning reaches the terminal. Call it before
    opening images from several threads (warning filters are not thread-local).
    """
    import warnings

    from PIL import Image

    Image.MAX_IMAGE_PIXELS = limit
    warnings.filterwarnings("error", category=Image.DecompressionBombWarning)


class ImageTooLarge(UnreadableImage):
    """An image above the pixel limit (`limit_pixels`), a possible decompression bomb. Its `reason` names the
    run config's setting that raises the limit; `reason_with` words it for a caller that has none."""

    def __init__(self, path: Path, size: str, limit: str) -> None:
        self.size = size
        self.limit = limit
        super().__init__(
            path, self.reason_with("(a run config's data.max_image_pixels); raise it if you trust this file")
        )

    def reason_with(self, remedy: str) -> str:
        """The reason, with `remedy` (where the limit comes from, what to do) after the numbers."""
        return f"too large: {self.size}, above the limit of {self.limit} {remedy}"


def _too_large(path: Path, error: Exception) -> ImageTooLarge:
    from PIL import Image

    found = re.search(r"\((\d+) pixels\)", str(error))
    size = f"{int(found.group(1)):,} pixels" if found else str(error)
    limit = f"{Image.MAX_IMAGE_PIXELS:,}" if Image.MAX_IMAGE_PIXELS else "unset"
    return ImageTooLarge(path, size, limit)


def _open(path: Path) -> Image.Image:
    from PIL import Image, UnidentifiedImageError

    try:
        check_link(path)
        if path.stat().st_size == 0:
            raise UnreadableImage(path, "empty file (0 bytes)")
        return Image.open(path)
    except UnidentifiedImageError:
        raise UnreadableImage(path, "not an image format Pillow can read") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise _too_large(path, exc) from None
    except OSError as exc:
        raise UnreadableImage(path, f"unreadable: {exc}") from None


def read_header(path: Path) -> ImageHeader:
    with _open(path) as image:
        width, height = image.size
        try:
            orientation = image.getexif().get(_EXIF_ORIENTATION, 1)
        except Exception:  # noqa: BLE001 - a broken EXIF block only means "no rotation"
            orientation = 1
        frames = int(getattr(image, "n_frames", 1))
    if orientation in _TRANSPOSED_ORIENTATIONS:
        width, height = height, width
    return ImageHeader(height=height, width=width, frames=frames)


def verify_image(path: Path) -> None:
    """Prove the file decodes, as cheaply as its format allows.

    PNG checks its chunk CRCs without inflating pixels; JPEG decodes at 1/8 scale (DCT scaling), which
    still reaches the end of the data and so finds truncation; anything else decodes fully.
    """
    try:
        with _open(path) as image:
            if image.format == "PNG":
                image.verify()
            else:
                if image.format == "JPEG":
                    image.draft("RGB", (max(1, image.width // 8), max(1, image.height // 8)))
                image.load()
    except UnreadableImage:
        raise
    except Exception as exc:  # noqa: BLE001 - decoders raise many types; all mean "unusable file"
        raise UnreadableImage(path, f"truncated or corrupt: {exc}") from None


def _to_8bit(image: Image.Image) -> Image.Image:
    """16-bit and float greyscale: scale to 8 bits (Pillow's own convert would clip at 255)."""
    import numpy as np
    from PIL import Image

    values = np.asarray(image, dtype=np.float64)
    if image.mode == "F":
        peak = 1.0 if values.size and float(values.max()) <= 1.0 else 255.0
    else:
        peak = 65535.0 if image.mode.startswith("I;16") or (values.size and float(values.max()) > 255) else 255.0
    scaled = np.clip(np.rint(values * (255.0 / peak)), 0, 255).astype(np.uint8)
    return Image.fromarray(scaled, mode="L")


def to_rgb(image: Image.Image, background: tuple[int, int, int]) -> tuple[Image.Image, Image.Image | None]:
    """Plain 8-bit RGB plus the alpha channel (None when fully opaque), flattened onto `background`."""
    from PIL import Image

    if image.mode.startswith("I") or image.mode == "F":
        image = _to_8bit(image)
    if (image.mode == "P" and "transparency" in image.info) or image.mode in ("PA", "LA", "La", "RGBa"):
        image = image.convert("RGBA")
    if image.mode != "RGBA":
        return (image if image.mode == "RGB" else image.convert("RGB")), None
    alpha = image.getchannel("A")
    if alpha.getextrema() == (255, 255):
        return image.convert("RGB"), None
    flat = Image.new("RGB", image.size, background)
    flat.paste(image.convert("RGB"), mask=alpha)
    return flat, alpha


def decode_image(path: Path, background: tuple[int, int, int]) -> tuple[Image.Image, Image.Image | None]:
    """Decode the first frame, upright (EXIF orientation applied), as RGB plus optional alpha."""
    from PIL import ImageOps

    try:
        with _open(path) as image:
            image.load()
            upright = ImageOps.exif_transpose(image)
            return to_rgb(upright, background)
    except UnreadableImage:
        raise
    except Exception as exc:  # noqa: BLE001 - see verify_image
        raise UnreadableImage(path, f"truncated or corrupt: {exc}") from None


def decode_mask(path: Path, size: tuple[int, int]) -> Image.Image:
    """An 8-bit greyscale mask (white = train) of `size` (width, height), upright."""
    from PIL import Image, ImageOps

    try:
        with _open(path) as mask:
            mask.load()
            upright = ImageOps.exif_transpose(mask)
    except UnreadableImage:
        raise
    except Exception as exc:  # noqa: BLE001 - see verify_image
        raise UnreadableImage(path, f"mask truncated or corrupt: {exc}") from None
    if upright.mode.startswith("I") or upright.mode == "F":
        grey = _to_8bit(upright)
    elif upright.mode in ("RGBA", "LA", "PA") or (upright.mode == "P" and "transparency" in upright.info):
        grey = upright.convert("RGBA").convert("L")
    else:
        grey = upright.convert("L")
    if grey.size != size:
        grey = grey.resize(size, Image.Resampling.BILINEAR)
    return grey


def read_text_lines(path: Path) -> tuple[list[str], bool]:
    """Non-empty stripped lines, and whether invalid UTF-8 had to be replaced to read them."""
    raw = path.read_bytes()
    try:
        text, replaced = raw.decode("utf-8-sig"), False
    except UnicodeDecodeError:
        text, replaced = raw.decode("utf-8", errors="replace"), True
    return [line.strip() for line in text.splitlines() if line.strip()], replaced
