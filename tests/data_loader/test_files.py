"""Decoding what real folders contain: odd formats load as RGB, broken files are refused with a reason."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from onetrainer.data_loader.files import (
    UnreadableImage,
    decode_image,
    decode_mask,
    list_images,
    read_header,
    read_text_lines,
    verify_image,
)
from onetrainer.util.tiny.dataset import (
    EXIF_ROTATED_DISPLAY_SIZE,
    ODD_IMAGE_FILES,
    UNREADABLE_ODD_FILES,
)

WHITE = (255, 255, 255)


def test_list_images_skips_sidecars_captions_and_hidden(odd_image_dataset_dir: Path) -> None:
    names = {path.name for path in list_images(odd_image_dataset_dir, recursive=False)}
    assert "img-000.png" in names
    assert not any(name.endswith(("-masklabel.png", ".txt")) for name in names)
    assert set(ODD_IMAGE_FILES.values()) <= names


def test_list_images_recursive_skips_hidden_folders(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / ".hidden").mkdir()
    for path in (tmp_path / "a.png", tmp_path / "sub" / "b.png", tmp_path / ".hidden" / "c.png"):
        Image.new("RGB", (8, 8)).save(path)
    assert [p.name for p in list_images(tmp_path, recursive=False)] == ["a.png"]
    assert [p.name for p in list_images(tmp_path, recursive=True)] == ["a.png", "b.png"]


@pytest.mark.parametrize("kind", sorted(ODD_IMAGE_FILES))
def test_every_odd_file_decodes_to_rgb_or_is_refused(odd_image_dataset_dir: Path, kind: str) -> None:
    path = odd_image_dataset_dir / ODD_IMAGE_FILES[kind]
    if path.name in UNREADABLE_ODD_FILES:
        with pytest.raises(UnreadableImage) as info:
            verify_image(path)
        assert info.value.reason
        return
    verify_image(path)
    image, _ = decode_image(path, WHITE)
    header = read_header(path)
    assert image.mode == "RGB"
    assert image.size == (header.width, header.height)


def test_exif_rotation_is_applied_to_header_and_pixels(odd_image_dataset_dir: Path) -> None:
    path = odd_image_dataset_dir / ODD_IMAGE_FILES["exif_rotated"]
    header = read_header(path)
    image, _ = decode_image(path, WHITE)
    assert (header.width, header.height) == EXIF_ROTATED_DISPLAY_SIZE
    assert image.size == EXIF_ROTATED_DISPLAY_SIZE


def test_16bit_png_is_scaled_not_clipped(odd_image_dataset_dir: Path) -> None:
    image, _ = decode_image(odd_image_dataset_dir / ODD_IMAGE_FILES["16bit"], WHITE)
    values = np.asarray(image)[..., 0]
    assert values.min() == 0
    assert values.max() == 255
    assert len(np.unique(values)) > 200, "a 16-bit ramp must stay a ramp, not saturate at 255"


def test_palette_transparency_is_flattened_and_kept_as_alpha(odd_image_dataset_dir: Path) -> None:
    image, alpha = decode_image(odd_image_dataset_dir / ODD_IMAGE_FILES["palette_transparent"], (10, 20, 30))
    assert alpha is not None
    assert np.asarray(alpha)[:16].max() == 0, "the pasted top band is the transparent palette index"
    assert tuple(np.asarray(image)[0, 0]) == (10, 20, 30)


def test_opaque_images_have_no_alpha(odd_image_dataset_dir: Path) -> None:
    _, alpha = decode_image(odd_image_dataset_dir / ODD_IMAGE_FILES["cmyk"], WHITE)
    assert alpha is None


def test_animated_gif_header_counts_frames(odd_image_dataset_dir: Path) -> None:
    assert read_header(odd_image_dataset_dir / ODD_IMAGE_FILES["animated"]).frames == 3


def test_zero_byte_file_reason(odd_image_dataset_dir: Path) -> None:
    with pytest.raises(UnreadableImage, match="empty file"):
        read_header(odd_image_dataset_dir / ODD_IMAGE_FILES["empty"])


def test_truncated_jpeg_is_found_by_verify(tmp_path: Path) -> None:
    path = tmp_path / "cut.jpg"
    Image.effect_noise((128, 128), 50).convert("RGB").save(path, quality=95)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    read_header(path)
    with pytest.raises(UnreadableImage, match="truncated"):
        verify_image(path)


def test_mask_is_resized_to_the_image_and_made_grey(tmp_path: Path) -> None:
    path = tmp_path / "m.png"
    Image.new("RGB", (10, 20), (255, 255, 255)).save(path)
    mask = decode_mask(path, (40, 80))
    assert (mask.mode, mask.size) == ("L", (40, 80))


def test_caption_with_bad_bytes_is_read_with_replacement(tmp_path: Path) -> None:
    path = tmp_path / "c.txt"
    path.write_bytes(b"a cat\xff\xfe here\n\nsecond line\n")
    lines, replaced = read_text_lines(path)
    assert replaced
    assert lines == ["a cat\ufffd\ufffd here", "second line"]


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-le", "utf-16-be", "utf-32", "utf-8-sig"])
def test_caption_with_a_byte_order_mark_is_decoded_by_it(tmp_path: Path, encoding: str) -> None:
    """Windows Notepad's "Unicode" is UTF-16 LE with a mark; `utf-16-le`/`-be` write none, so it is added."""
    path = tmp_path / "c.txt"
    text = "a cat, sitting\r\nzweite Zeile: Größe\r\n"
    raw = text.encode(encoding)
    if encoding in ("utf-16-le", "utf-16-be"):
        raw = "\ufeff".encode(encoding) + raw
    path.write_bytes(raw)
    assert read_text_lines(path) == (["a cat, sitting", "zweite Zeile: Größe"], False)


def test_utf16_caption_with_a_lone_surrogate_is_read_with_replacement(tmp_path: Path) -> None:
    path = tmp_path / "c.txt"
    path.write_bytes("a cat".encode("utf-16") + b"\x00\xd8" + " here".encode("utf-16-le"))
    assert read_text_lines(path) == (["a cat\ufffd here"], True)


def _colour_keyed(path: Path, mode: str, fill: object, key: object, opaque: object) -> Path:
    """A PNG whose top-left quarter is `opaque` and the rest `fill`, the colour `key` transparent (tRNS)."""
    image = Image.new(mode, (8, 8), fill)  # type: ignore[arg-type]
    image.paste(opaque, (0, 0, 4, 4))  # type: ignore[arg-type]
    image.save(path, transparency=key)
    return path


@pytest.mark.parametrize(
    ("mode", "fill", "key", "opaque", "opaque_rgb"),
    [
        ("RGB", (255, 0, 0), (255, 0, 0), (0, 255, 0), (0, 255, 0)),
        ("L", 0, 0, 200, (200, 200, 200)),
        ("I;16", 300, 300, 65535, (255, 255, 255)),
        ("1", 1, 1, 0, (0, 0, 0)),
    ],
)
def test_colour_key_transparency_is_flattened_and_kept_as_alpha(
    tmp_path: Path, mode: str, fill: object, key: object, opaque: object, opaque_rgb: tuple[int, int, int]
) -> None:
    path = _colour_keyed(tmp_path / "keyed.png", mode, fill, key, opaque)
    image, alpha = decode_image(path, (10, 20, 30))
    assert alpha is not None
    assert np.asarray(alpha).tolist() == [[255] * 4 + [0] * 4] * 4 + [[0] * 8] * 4
    assert tuple(np.asarray(image)[7, 7]) == (10, 20, 30)
    assert tuple(np.asarray(image)[0, 0]) == opaque_rgb
