"""Files in a concept folder: which are images, their sidecars, sizes, and decoding to plain RGB.

Users' folders hold whatever their cameras and editors wrote: CMYK and palette files, 16-bit PNGs,
EXIF-rotated JPEGs, transparency, animations, and the odd broken file. Everything downstream works
on one shape (8-bit RGB plus an optional alpha), so every conversion happens here, once, and a file
that cannot be read raises `UnreadableImage` with a reason a person can act on.
"""

from __future__ import annotations

import codecs
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

_COLOUR_KEYED_MODES = frozenset({"1", "L", "RGB", "I", "I;16", "I;16B", "I;16L"})
"""Modes whose PNG transparency is one colour (`tRNS`); palette images are converted by Pillow itself."""

_EXIF_ORIENTATION = 0x0112
_TRANSPOSED_ORIENTATIONS = frozenset({5, 6, 7, 8})


class UnreadableImage(Exception):
    """An image that cannot be used; `reason` says why in words fit for a report.

    As such it is a fact about the file's bytes, so the scan may remember it until the file changes;
    the subclasses below are the reasons that depend on something else and must not be remembered so.
    """

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


class ImageTooLarge(UnreadableImage):
    """Above the pixel limit in force (`limit`, a possible decompression bomb): raising the limit makes the same
    file usable. Its `reason` names the run config's setting that raises the limit; `reason_with` words it for
    a caller that has none."""

    def __init__(self, path: Path, size: str, limit: int | None) -> None:
        self.size = size
        self.limit = limit
        super().__init__(
            path, self.reason_with("(a run config's data.max_image_pixels); raise it if you trust this file")
        )

    def reason_with(self, remedy: str) -> str:
        """The reason, with `remedy` (where the limit comes from, what to do) after the numbers."""
        shown = f"{self.limit:,}" if self.limit else "unset"
        return f"too large: {self.size}, above the limit of {shown} {remedy}"


class ImageReadFailed(UnreadableImage):
    """The operating system failed to read the file (permissions, a network share, an I/O error):
    nothing says the bytes are bad, so the next attempt may succeed."""


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


def sidecar_sharers(images: list[Path]) -> list[list[Path]]:
    """Groups of two or more images named alike but for the extension (`cat.png`, `cat.jpg`): they share one
    caption file (`cat.txt`) and one mask (`cat-masklabel.png`), which cannot say which image it describes."""
    groups: dict[Path, list[Path]] = {}
    for image in images:
        groups.setdefault(image.with_suffix(""), []).append(image)
    return [group for group in groups.values() if len(group) > 1]


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


def pixel_limit() -> int | None:
    """The limit in force (set by `limit_pixels`), which decides what is too large."""
    from PIL import Image

    return Image.MAX_IMAGE_PIXELS


def _too_large(path: Path, size: str) -> ImageTooLarge:
    return ImageTooLarge(path, size, pixel_limit())


def _bomb(path: Path, error: Exception) -> ImageTooLarge:
    """Pillow's refusal, reworded with the pixel count its message gives."""
    found = re.search(r"\((\d+) pixels\)", str(error))
    return _too_large(path, f"{int(found.group(1)):,} pixels" if found else str(error))


def check_pixel_limit(path: Path, header: ImageHeader) -> None:
    """Raise `ImageTooLarge` for a size above the limit in force, as opening the file would.

    A header remembered from a run with a higher (or no) limit skips the open that refuses it, so
    the check is repeated on the remembered size; Pillow refuses above the limit (see `limit_pixels`).
    """
    limit = pixel_limit()
    pixels = header.height * header.width
    if limit and pixels > limit:
        raise _too_large(path, f"{pixels:,} pixels")


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
        raise _bomb(path, exc) from None
    except OSError as exc:
        raise ImageReadFailed(path, f"unreadable: {exc}") from None


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
    except OSError as exc:
        raise _read_error(path, exc) from None
    except Exception as exc:  # noqa: BLE001 - decoders raise many types; all mean "unusable file"
        raise UnreadableImage(path, f"truncated or corrupt: {exc}") from None


def _read_error(path: Path, error: OSError) -> UnreadableImage:
    """A failed read (the system's, with an error number) apart from Pillow's own errors about the data
    (a truncated file, a decoder error), which carry none."""
    if error.errno is not None:
        return ImageReadFailed(path, f"unreadable: {error}")
    return UnreadableImage(path, f"truncated or corrupt: {error}")


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


def _colour_key_alpha(image: Image.Image) -> Image.Image | None:
    """The alpha of a colour-keyed image (a PNG `tRNS` on a greyscale or RGB image), else None.

    Such a file has no alpha channel: one value (`info["transparency"]`) means transparent. Ignored,
    the keyed colour was trained on instead of `image.alpha_background`, and no mask came of it. It is
    read before 16-bit values are scaled to 8 bits, where the key would no longer match.
    """
    import numpy as np
    from PIL import Image

    key = image.info.get("transparency")
    if image.mode not in _COLOUR_KEYED_MODES or not isinstance(key, int | tuple):
        return None
    values = np.asarray(image.convert("L") if image.mode == "1" else image)
    keyed = np.all(values == np.asarray(key), axis=-1) if values.ndim == 3 else values == key
    return Image.fromarray(np.where(keyed, 0, 255).astype(np.uint8), mode="L")


def to_rgb(image: Image.Image, background: tuple[int, int, int]) -> tuple[Image.Image, Image.Image | None]:
    """Plain 8-bit RGB plus the alpha channel (None when fully opaque), flattened onto `background`."""
    from PIL import Image

    keyed_alpha = _colour_key_alpha(image)
    if image.mode.startswith("I") or image.mode == "F":
        image = _to_8bit(image)
    if keyed_alpha is not None:
        image = image.convert("RGB")
        image.putalpha(keyed_alpha)
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


_BOM_ENCODINGS = (
    (codecs.BOM_UTF32_LE, "utf-32"),
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
    (codecs.BOM_UTF8, "utf-8-sig"),
)
"""Byte-order marks and the codec that reads past them; UTF-32 LE first, as its mark begins with UTF-16 LE's.
Windows Notepad's "Unicode" is UTF-16 LE with a mark, and read as UTF-8 it became NUL-riddled noise."""


def _text_encoding(raw: bytes) -> str:
    """The encoding a byte-order mark announces; UTF-8 without one (what every captioning tool writes)."""
    return next((encoding for bom, encoding in _BOM_ENCODINGS if raw.startswith(bom)), "utf-8")


def read_text_lines(path: Path) -> tuple[list[str], bool]:
    """Non-empty stripped lines, and whether invalid bytes had to be replaced to read them."""
    raw = path.read_bytes()
    encoding = _text_encoding(raw)
    try:
        text, replaced = raw.decode(encoding), False
    except UnicodeDecodeError:
        text, replaced = raw.decode(encoding, errors="replace"), True
    return [line.strip() for line in text.splitlines() if line.strip()], replaced
