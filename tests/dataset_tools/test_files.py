"""Folder walking and image decoding shared by `caption` and `mask`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from onetrainer.dataset_tools.files import (
    UnreadableImage,
    caption_path,
    find_images,
    load_rgb,
    mask_path,
)
from onetrainer.util.errors import UserError
from onetrainer.util.tiny.dataset import (
    EXIF_ROTATED_DISPLAY_SIZE,
    ODD_IMAGE_FILES,
    UNREADABLE_ODD_FILES,
)


def _touch_image(path: Path, colour: tuple[int, int, int] = (10, 20, 30)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), colour).save(path)
    return path


def test_find_images_skips_sidecars_hidden_and_other_files(tmp_path: Path) -> None:
    _touch_image(tmp_path / "b.png")
    _touch_image(tmp_path / "a.JPG")
    _touch_image(tmp_path / "a-masklabel.png")
    _touch_image(tmp_path / "a-condlabel.png")
    _touch_image(tmp_path / ".a.png.123.tmp.png")
    (tmp_path / "a.txt").write_text("caption")
    (tmp_path / "notes.md").write_text("x")
    _touch_image(tmp_path / "sub" / "c.webp")

    assert [path.name for path in find_images(tmp_path, recursive=False)] == ["a.JPG", "b.png"]


def test_find_images_recursive_includes_subfolders_but_not_hidden_ones(tmp_path: Path) -> None:
    _touch_image(tmp_path / "a.png")
    _touch_image(tmp_path / "sub" / "deeper" / "c.png")
    _touch_image(tmp_path / ".cache" / "d.png")

    found = find_images(tmp_path, recursive=True)

    assert [path.relative_to(tmp_path).as_posix() for path in found] == ["a.png", "sub/deeper/c.png"]


def test_find_images_rejects_missing_folder_and_file(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="folder not found"):
        find_images(tmp_path / "missing", recursive=False)
    image = _touch_image(tmp_path / "a.png")
    with pytest.raises(UserError, match="got a file"):
        find_images(image, recursive=False)


def test_sidecar_paths_follow_the_data_loader_convention() -> None:
    image = Path("/data/cats/img.01.jpg")
    assert caption_path(image) == Path("/data/cats/img.01.txt")
    assert mask_path(image) == Path("/data/cats/img.01-masklabel.png")


def test_load_rgb_applies_exif_rotation_and_flattens_alpha(odd_image_dataset_dir: Path) -> None:
    rotated = load_rgb(odd_image_dataset_dir / ODD_IMAGE_FILES["exif_rotated"])
    assert rotated.size == EXIF_ROTATED_DISPLAY_SIZE

    transparent = load_rgb(odd_image_dataset_dir / ODD_IMAGE_FILES["palette_transparent"])
    assert transparent.mode == "RGB"
    # The top band was pasted with the transparent palette index: it must come out white.
    assert np.asarray(transparent)[:16].min() == 255


@pytest.mark.parametrize("kind", ["cmyk", "16bit", "grayscale", "rgba", "animated", "strip"])
def test_load_rgb_decodes_odd_but_valid_images(odd_image_dataset_dir: Path, kind: str) -> None:
    image = load_rgb(odd_image_dataset_dir / ODD_IMAGE_FILES[kind])
    assert image.mode == "RGB"
    assert np.asarray(image).std() > 0


@pytest.mark.parametrize("name", sorted(UNREADABLE_ODD_FILES))
def test_load_rgb_raises_unreadable_for_broken_files(odd_image_dataset_dir: Path, name: str) -> None:
    with pytest.raises(UnreadableImage):
        load_rgb(odd_image_dataset_dir / name)
