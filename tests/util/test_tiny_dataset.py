from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps, UnidentifiedImageError

from onetrainer.util.tiny.dataset import (
    EXIF_ROTATED_DISPLAY_SIZE,
    EXIF_ROTATED_STORED_SIZE,
    IMAGE_SIZES,
    MASK_SUFFIX,
    ODD_IMAGE_FILES,
    SHAPE_COLOURS,
    SHAPES,
    SHAPES_BACKGROUND,
    UNREADABLE_ODD_FILES,
    make_image_dataset,
    make_shapes_dataset,
)


def _images(root: Path) -> list[Path]:
    return sorted(p for p in root.glob("img-*") if p.suffix != ".txt" and not p.name.endswith(MASK_SUFFIX))


def _contents(root: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(root.iterdir())}


def test_writes_images_captions_and_masks_for_even_indices(image_dataset_dir: Path) -> None:
    images = _images(image_dataset_dir)
    assert len(images) == 8
    assert {p.suffix for p in images} == {".png", ".jpg", ".webp"}
    assert all(p.with_suffix(".txt").is_file() for p in images)
    masks = sorted(p.name for p in image_dataset_dir.glob(f"*{MASK_SUFFIX}"))
    assert masks == [f"img-{i:03d}{MASK_SUFFIX}" for i in (0, 2, 4, 6)]


def test_images_cycle_through_mixed_sizes(image_dataset_dir: Path) -> None:
    sizes = [Image.open(p).size for p in _images(image_dataset_dir)]
    assert sizes == list(IMAGE_SIZES)
    assert all(48 <= side <= 160 for size in sizes for side in size)
    assert len({round(w / h, 2) for w, h in sizes}) >= 5


def test_masks_are_grayscale_and_match_their_image(image_dataset_dir: Path) -> None:
    for mask_path in image_dataset_dir.glob(f"*{MASK_SUFFIX}"):
        stem = mask_path.name.removesuffix(MASK_SUFFIX)
        image_path = next(p for p in _images(image_dataset_dir) if p.stem == stem)
        mask = Image.open(mask_path)
        values = np.asarray(mask)
        assert mask.mode == "L"
        assert mask.size == Image.open(image_path).size
        assert values.max() == 255
        assert values.min() == 0
        assert ((values > 0) & (values < 255)).any()


def test_every_third_caption_file_holds_several_captions(image_dataset_dir: Path) -> None:
    line_counts = [len(p.read_text().splitlines()) for p in sorted(image_dataset_dir.glob("img-*.txt"))]
    assert line_counts == [1, 1, 3, 1, 1, 3, 1, 1]


def test_same_seed_gives_byte_identical_files(image_dataset_dir: Path, tmp_path: Path) -> None:
    assert _contents(make_image_dataset(tmp_path)) == _contents(image_dataset_dir)


def test_other_seed_gives_other_images(image_dataset_dir: Path, tmp_path: Path) -> None:
    other = make_image_dataset(tmp_path, seed=1)
    assert (other / "img-000.png").read_bytes() != (image_dataset_dir / "img-000.png").read_bytes()


def test_smaller_count_gives_a_prefix_of_the_larger_dataset(image_dataset_dir: Path, tmp_path: Path) -> None:
    small = _contents(make_image_dataset(tmp_path, count=3))
    assert small == {name: data for name, data in _contents(image_dataset_dir).items() if name in small}
    assert len(small) == 3 + 3 + 2


def test_captions_and_masks_can_be_left_out(tmp_path: Path) -> None:
    make_image_dataset(tmp_path, count=4, with_captions=False, with_masks=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "img-000.png",
        "img-001.jpg",
        "img-002.webp",
        "img-003.png",
    ]


@pytest.mark.parametrize(
    ("kind", "mode"),
    [("cmyk", "CMYK"), ("16bit", "I;16"), ("palette_transparent", "P"), ("grayscale", "L"), ("rgba", "RGBA")],
)
def test_odd_image_has_its_unusual_mode(odd_image_dataset_dir: Path, kind: str, mode: str) -> None:
    with Image.open(odd_image_dataset_dir / ODD_IMAGE_FILES[kind]) as image:
        image.load()
        assert image.mode == mode


def test_palette_image_carries_transparency(odd_image_dataset_dir: Path) -> None:
    with Image.open(odd_image_dataset_dir / ODD_IMAGE_FILES["palette_transparent"]) as image:
        assert image.info["transparency"] == 0
        assert image.convert("RGBA").getextrema()[3] == (0, 255)


def test_exif_rotated_jpeg_displays_with_swapped_sides(odd_image_dataset_dir: Path) -> None:
    with Image.open(odd_image_dataset_dir / ODD_IMAGE_FILES["exif_rotated"]) as image:
        assert image.size == EXIF_ROTATED_STORED_SIZE
        assert image.getexif()[0x0112] == 6
        assert ImageOps.exif_transpose(image).size == EXIF_ROTATED_DISPLAY_SIZE
    mask = Image.open(odd_image_dataset_dir / f"odd-exif-rotated{MASK_SUFFIX}")
    assert mask.size == EXIF_ROTATED_DISPLAY_SIZE


def test_strip_and_animation_have_their_shapes(odd_image_dataset_dir: Path) -> None:
    assert Image.open(odd_image_dataset_dir / ODD_IMAGE_FILES["strip"]).size == (1, 4000)
    with Image.open(odd_image_dataset_dir / ODD_IMAGE_FILES["animated"]) as animation:
        assert animation.n_frames == 3


def test_empty_file_is_not_an_image(odd_image_dataset_dir: Path) -> None:
    path = odd_image_dataset_dir / ODD_IMAGE_FILES["empty"]
    assert path.stat().st_size == 0
    with pytest.raises(UnidentifiedImageError):
        Image.open(path)


def test_truncated_png_has_a_header_but_fails_to_decode(odd_image_dataset_dir: Path) -> None:
    with Image.open(odd_image_dataset_dir / ODD_IMAGE_FILES["truncated"]) as image:
        assert image.size == (64, 64)
        with pytest.raises(OSError, match="truncated"):
            image.load()


def test_unreadable_files_are_exactly_the_broken_ones() -> None:
    assert {ODD_IMAGE_FILES["empty"], ODD_IMAGE_FILES["truncated"]} == UNREADABLE_ODD_FILES


def test_odd_files_come_with_the_regular_ones_and_captions(odd_image_dataset_dir: Path) -> None:
    assert len(_images(odd_image_dataset_dir)) == 8
    for name in ODD_IMAGE_FILES.values():
        assert (odd_image_dataset_dir / name).is_file()
        assert (odd_image_dataset_dir / name).with_suffix(".txt").read_text().startswith("an odd image")


def test_shapes_are_captioned_by_colour_and_shape(shapes_dataset_dir: Path) -> None:
    captions = [p.read_text().strip() for p in sorted(shapes_dataset_dir.glob("*.txt"))]
    assert len(captions) == 16
    pattern = re.compile(rf"a ({'|'.join(SHAPE_COLOURS)}) ({'|'.join(SHAPES)})")
    assert all(pattern.fullmatch(caption) for caption in captions)
    assert len(set(captions)) == len(SHAPE_COLOURS) * len(SHAPES)


def test_shape_images_hold_the_captioned_colour_on_the_background(shapes_dataset_dir: Path) -> None:
    for caption_path in sorted(shapes_dataset_dir.glob("*.txt")):
        colour = caption_path.read_text().split()[1]
        image = Image.open(caption_path.with_suffix(".png"))
        pixels = {tuple(colour) for colour in np.unique(np.asarray(image).reshape(-1, 3), axis=0).tolist()}
        assert image.size == (64, 64)
        assert pixels == {SHAPES_BACKGROUND, SHAPE_COLOURS[colour]}


def test_shapes_are_deterministic_by_seed(shapes_dataset_dir: Path, tmp_path: Path) -> None:
    assert _contents(make_shapes_dataset(tmp_path / "same")) == _contents(shapes_dataset_dir)
    assert _contents(make_shapes_dataset(tmp_path / "other", seed=1)) != _contents(shapes_dataset_dir)


def test_shape_size_is_configurable(tmp_path: Path) -> None:
    make_shapes_dataset(tmp_path, count=2, size=32)
    assert [Image.open(p).size for p in sorted(tmp_path.glob("*.png"))] == [(32, 32), (32, 32)]
