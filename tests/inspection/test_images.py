"""`inspect` on image folders: the data loader's dataset report, and unrecognised folders."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from onetrainer.inspection.dispatch import inspect_path
from onetrainer.util.errors import UserError
from onetrainer.util.tiny.dataset import UNREADABLE_ODD_FILES, make_image_dataset, write_png_claiming_size


def _snapshot(folder: Path) -> dict[str, float]:
    return {str(path.relative_to(folder)): path.stat().st_mtime for path in folder.rglob("*")}


def test_odd_image_folder_reports_counts_buckets_and_skipped_files(odd_image_dataset_dir: Path) -> None:
    before = _snapshot(odd_image_dataset_dir)

    result = inspect_path(odd_image_dataset_dir, resolution=64)

    assert (result.kind, result.format, result.model_type) == ("images", "folder", "sd15")
    concept = result.details["concepts"][0]
    assert concept["found"] == 18
    skipped = {Path(item["path"]).name: item["reason"] for item in concept["skipped"]}
    assert set(UNREADABLE_ODD_FILES) <= set(skipped)
    assert concept["used"] == concept["found"] - len(skipped)
    assert concept["masks_found"] >= 4
    assert sum(result.details["buckets"].values()) == result.details["samples_per_epoch"]
    assert all(int(side) % 8 == 0 for bucket in result.details["buckets"] for side in bucket.split("x"))
    assert result.view is not None
    assert _snapshot(odd_image_dataset_dir) == before


def test_sdxl_buckets_use_its_quantisation(image_dataset_dir: Path) -> None:
    from onetrainer.util.enums import ModelType
    from onetrainer.util.registry import ModuleKind, lookup

    try:
        lookup(ModuleKind.SETUP, ModelType.SDXL)
    except UserError:
        pytest.skip("the SDXL setup is not registered in this build yet")
    result = inspect_path(image_dataset_dir, resolution=128, model_type="sdxl")

    assert all(int(side) % 64 == 0 for bucket in result.details["buckets"] for side in bucket.split("x"))


def test_recursive_finds_nested_images(tmp_path: Path) -> None:
    make_image_dataset(tmp_path / "nested", count=2, with_masks=False)

    with pytest.raises(UserError, match="does not recognise") as caught:
        inspect_path(tmp_path)
    assert "--recursive" in (caught.value.hint or "")
    assert inspect_path(tmp_path, recursive=True).details["concepts"][0]["found"] == 2


def test_folder_without_anything_known_says_what_it_holds(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "data.csv").write_text("x")
    os.mkdir(tmp_path / "sub")

    with pytest.raises(UserError) as caught:
        inspect_path(tmp_path)

    assert "1 .txt" in (caught.value.hint or "")
    assert "1 sub-folder" in (caught.value.hint or "")


def test_missing_path_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="file or folder not found") as caught:
        inspect_path(tmp_path / "missing.safetensors")
    assert "Check the spelling" in (caught.value.hint or "")


def test_a_decompression_bomb_is_listed_as_skipped(
    tmp_path: Path, image_dataset_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from PIL import Image

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", Image.MAX_IMAGE_PIXELS)
    folder = Path(shutil.copytree(image_dataset_dir, tmp_path / "images"))
    write_png_claiming_size(folder / "giant.png", 15000, 15000)

    concept = inspect_path(folder, resolution=64).details["concepts"][0]

    (skipped,) = concept["skipped"]
    assert skipped["path"] == str(folder / "giant.png")
    assert skipped["reason"].startswith("too large: 225,000,000 pixels")
    assert concept["used"] == 8
