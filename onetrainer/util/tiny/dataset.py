"""Small on-disk image datasets for tests and the offline demo.

`make_image_dataset` mimics a user's concept folder: mixed sizes, aspect ratios and formats, caption
files (some with one caption per line) and mask files, and optionally the awkward files real folders
contain (CMYK, 16-bit, palette transparency, EXIF rotation, extreme strips, broken files, animations).
`make_shapes_dataset` is the opposite: images simple enough that a tiny model visibly learns them.

Every image's content comes from an RNG keyed by (seed, index), so a dataset of 4 images equals the
first 4 of a dataset of 8, and the same seed always gives byte-identical files.
"""

from __future__ import annotations

import io
import os
import struct
import zlib
from pathlib import Path
from typing import TYPE_CHECKING

from onetrainer.util.atomic import atomic_file, atomic_write_bytes, atomic_write_text

if TYPE_CHECKING:
    import numpy as np
    from PIL import Image

IMAGE_SIZES: tuple[tuple[int, int], ...] = (
    (64, 64),
    (96, 64),
    (64, 128),
    (80, 80),
    (128, 96),
    (48, 64),
    (160, 120),
    (72, 56),
)
"""(width, height) of the regular images, cycled by index."""

IMAGE_FORMATS: tuple[tuple[str, str], ...] = (("png", "PNG"), ("jpg", "JPEG"), ("webp", "WEBP"))
"""(suffix, Pillow format) of the regular images, cycled by index."""

MASK_SUFFIX = "-masklabel.png"

ODD_IMAGE_FILES: dict[str, str] = {
    "cmyk": "odd-cmyk.jpg",
    "16bit": "odd-16bit.png",
    "palette_transparent": "odd-palette-transparent.png",
    "exif_rotated": "odd-exif-rotated.jpg",
    "strip": "odd-strip-1x4000.png",
    "truncated": "odd-truncated.png",
    "empty": "odd-empty.png",
    "animated": "odd-animated.gif",
    "grayscale": "odd-grayscale.jpg",
    "rgba": "odd-rgba.png",
}
"""What each odd file is, by file name; a loader test can look up the case it cares about."""

UNREADABLE_ODD_FILES = frozenset({ODD_IMAGE_FILES["truncated"], ODD_IMAGE_FILES["empty"]})
"""Odd files that no decoder can read; a loader must skip or report them, never crash."""

EXIF_ROTATED_STORED_SIZE = (96, 64)
EXIF_ROTATED_DISPLAY_SIZE = (64, 96)

SHAPES = ("circle", "square", "triangle")
SHAPE_COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 170, 50),
    "blue": (30, 60, 220),
    "yellow": (235, 200, 20),
}
SHAPES_BACKGROUND = (245, 245, 240)

_SUBJECTS = ("cat", "house", "tree", "car", "flower", "mountain", "boat", "dog")
_STYLES = ("a photo of", "a painting of", "a sketch of", "a close-up of")
_COLOURS = ("red", "green", "blue", "yellow", "white", "black")


def _rng(seed: int, index: int, stream: str) -> np.random.Generator:
    """A generator per (seed, index, purpose), so adding a stream or an image never shifts another."""
    import numpy as np

    return np.random.default_rng([seed, index, zlib.crc32(stream.encode())])


def _save_image(image: Image.Image, path: Path, pil_format: str, **params: object) -> None:
    with atomic_file(path) as handle:
        image.save(handle, format=pil_format, **params)


def _random_picture(rng: np.random.Generator, width: int, height: int) -> Image.Image:
    """A gradient with a few shapes: structured enough that a VAE and crops have something to work on."""
    import numpy as np
    from PIL import Image, ImageDraw

    start, end = rng.integers(0, 256, size=(2, 3))
    ramp = np.linspace(0.0, 1.0, width)[None, :, None]
    pixels = (start + (end - start) * ramp).repeat(height, axis=0).astype(np.uint8)
    image = Image.fromarray(pixels)
    draw = ImageDraw.Draw(image)
    for _ in range(3):
        x0, x1 = sorted(int(v) for v in rng.integers(0, width, size=2))
        y0, y1 = sorted(int(v) for v in rng.integers(0, height, size=2))
        colour = tuple(int(v) for v in rng.integers(0, 256, size=3))
        draw.ellipse((x0, y0, x1 + 1, y1 + 1), fill=colour)
    return image


def _random_mask(rng: np.random.Generator, width: int, height: int) -> Image.Image:
    """White (train) ellipse on black, blurred so the edge holds the grey values real masks have."""
    from PIL import Image, ImageDraw, ImageFilter

    mask = Image.new("L", (width, height), 0)
    cx, cy = (
        int(rng.integers(width // 3, 2 * width // 3 + 1)),
        int(rng.integers(height // 3, 2 * height // 3 + 1)),
    )
    rx, ry = width // 4, height // 4
    ImageDraw.Draw(mask).ellipse((cx - rx, cy - ry, cx + rx, cy + ry), fill=255)
    return mask.filter(ImageFilter.GaussianBlur(2))


def _captions(rng: np.random.Generator, index: int) -> list[str]:
    """One caption, or (every third image) several: one per line, as multi-caption files hold them."""
    count = 3 if index % 3 == 2 else 1
    return [f"{rng.choice(_STYLES)} a {rng.choice(_COLOURS)} {rng.choice(_SUBJECTS)}" for _ in range(count)]


def make_image_dataset(
    path: str | os.PathLike[str],
    *,
    count: int = 8,
    seed: int = 0,
    with_captions: bool = True,
    with_masks: bool = True,
    odd_images: bool = False,
) -> Path:
    """Write `count` images named `img-000.<ext>`... into `path` (created if needed) and return it.

    Images cycle through `IMAGE_SIZES` and `IMAGE_FORMATS`. Captions go to `img-000.txt`; every other
    image (even indices) gets an L-mode `img-000-masklabel.png` of the same size. With `odd_images`,
    the files of `ODD_IMAGE_FILES` are added too (with captions, when `with_captions`), and with
    `with_masks` the EXIF-rotated JPEG gets a mask in its displayed orientation.
    """
    root = Path(path)
    root.mkdir(parents=True, exist_ok=True)
    for index in range(count):
        width, height = IMAGE_SIZES[index % len(IMAGE_SIZES)]
        suffix, pil_format = IMAGE_FORMATS[index % len(IMAGE_FORMATS)]
        stem = f"img-{index:03d}"
        image = _random_picture(_rng(seed, index, "image"), width, height)
        _save_image(image, root / f"{stem}.{suffix}", pil_format)
        if with_captions:
            captions = _captions(_rng(seed, index, "caption"), index)
            atomic_write_text(root / f"{stem}.txt", "\n".join(captions) + "\n")
        if with_masks and index % 2 == 0:
            mask = _random_mask(_rng(seed, index, "mask"), width, height)
            _save_image(mask, root / f"{stem}{MASK_SUFFIX}", "PNG")
    if odd_images:
        _write_odd_images(root, seed, with_captions=with_captions, with_masks=with_masks)
    return root


def _write_odd_images(root: Path, seed: int, *, with_captions: bool, with_masks: bool) -> None:
    import numpy as np
    from PIL import Image

    def picture(name: str, width: int, height: int) -> Image.Image:
        return _random_picture(_rng(seed, 0, f"odd-{name}"), width, height)

    files = ODD_IMAGE_FILES
    _save_image(picture("cmyk", 64, 80).convert("CMYK"), root / files["cmyk"], "JPEG")

    ramp = np.linspace(0, 65535, 64 * 48).reshape(48, 64).astype(np.uint16)
    _save_image(Image.fromarray(ramp), root / files["16bit"], "PNG")

    palette_image = picture("palette", 72, 64).quantize(colors=16)
    palette_image.paste(0, (0, 0, 72, 16))
    _save_image(palette_image, root / files["palette_transparent"], "PNG", transparency=0)

    rotated = picture("exif", *EXIF_ROTATED_STORED_SIZE)
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to display.
    _save_image(rotated, root / files["exif_rotated"], "JPEG", exif=exif.tobytes())
    if with_masks:
        # The mask matches what users see (the displayed orientation), not the stored pixels.
        mask = _random_mask(_rng(seed, 0, "exif-mask"), *EXIF_ROTATED_DISPLAY_SIZE)
        _save_image(mask, root / f"{Path(files['exif_rotated']).stem}{MASK_SUFFIX}", "PNG")

    _save_image(picture("strip", 1, 4000), root / files["strip"], "PNG")

    noise = _rng(seed, 0, "truncated").integers(0, 256, size=(64, 64, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(noise).save(buffer, format="PNG")
    atomic_write_bytes(root / files["truncated"], buffer.getvalue()[: len(buffer.getvalue()) // 2])

    atomic_write_bytes(root / files["empty"], b"")

    frames = [picture(f"frame{i}", 64, 64) for i in range(3)]
    _save_image(
        frames[0],
        root / files["animated"],
        "GIF",
        save_all=True,
        append_images=frames[1:],
        duration=100,
        loop=0,
    )

    _save_image(picture("grayscale", 64, 64).convert("L"), root / files["grayscale"], "JPEG")

    rgba = picture("rgba", 64, 64).convert("RGBA")
    rgba.putalpha(Image.linear_gradient("L").resize((64, 64)))
    _save_image(rgba, root / files["rgba"], "PNG")

    if with_captions:
        for kind, name in files.items():
            atomic_write_text(root / f"{Path(name).stem}.txt", f"an odd image: {kind.replace('_', ' ')}\n")


def make_shapes_dataset(
    path: str | os.PathLike[str],
    *,
    count: int = 16,
    size: int = 64,
    seed: int = 0,
) -> Path:
    """Write `count` square PNGs of one solid shape each, captioned "a red circle" and so on.

    Colour/shape pairs are dealt from a seeded shuffle of all 12 combinations, so every pair appears
    before any repeats; position and scale are jittered per image.
    """
    import numpy as np
    from PIL import Image, ImageDraw

    root = Path(path)
    root.mkdir(parents=True, exist_ok=True)
    combos = [(colour, shape) for colour in SHAPE_COLOURS for shape in SHAPES]
    order = np.random.default_rng([seed, 0]).permutation(len(combos))
    for index in range(count):
        colour, shape = combos[order[index % len(combos)]]
        rng = _rng(seed, index, "shape")
        radius = size * float(rng.uniform(0.2, 0.32))
        cx, cy = (float(v) for v in rng.uniform(radius, size - radius, size=2))
        image = Image.new("RGB", (size, size), SHAPES_BACKGROUND)
        draw = ImageDraw.Draw(image)
        fill = SHAPE_COLOURS[colour]
        if shape == "circle":
            draw.ellipse((cx - radius, cy - radius, cx + radius, cy + radius), fill=fill)
        elif shape == "square":
            draw.rectangle((cx - radius, cy - radius, cx + radius, cy + radius), fill=fill)
        else:
            draw.polygon(
                [(cx, cy - radius), (cx - radius, cy + radius), (cx + radius, cy + radius)],
                fill=fill,
            )
        stem = f"shape-{index:03d}"
        _save_image(image, root / f"{stem}.png", "PNG")
        atomic_write_text(root / f"{stem}.txt", f"a {colour} {shape}\n")
    return root


def write_png_claiming_size(path: str | os.PathLike[str], width: int, height: int) -> Path:
    """A valid PNG whose header claims `width` x `height` but holds almost no pixel data.

    A few dozen bytes stand in for a gigapixel image where only the header is read (size limits,
    decompression-bomb guards); decoding it fails like any truncated file.
    """

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB, no interlacing
    data = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")
    target = Path(path)
    atomic_write_bytes(target, data)
    return target
