"""Scanning concept folders: what is used, what is skipped and why, and what is remembered."""

from __future__ import annotations

import shutil
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

import pytest

from onetrainer.data_loader.events import LoaderEvent
from onetrainer.data_loader.memo import FileMemo
from onetrainer.data_loader.scan import scan_concepts
from onetrainer.util.config.data import DataConfig
from onetrainer.util.errors import ConfigError
from onetrainer.util.tiny.dataset import ODD_IMAGE_FILES, write_png_claiming_size


def _scan(data: DataConfig, memo: FileMemo | None = None, events: list[LoaderEvent] | None = None):
    sink = events.append if events is not None else (lambda event: None)
    return scan_concepts(data, memo=memo or FileMemo(None), progress=sink)


def test_odd_dataset_is_used_or_reported_with_reasons(odd_image_dataset_dir: Path) -> None:
    events: list[LoaderEvent] = []
    (scan,) = _scan(DataConfig(concepts=[{"path": odd_image_dataset_dir}]), events=events)
    reasons = {item.path.name: item.reason for item in scan.skipped}
    assert set(reasons) == {ODD_IMAGE_FILES[k] for k in ("empty", "truncated", "strip")}
    assert reasons[ODD_IMAGE_FILES["empty"]].startswith("empty file")
    assert reasons[ODD_IMAGE_FILES["truncated"]].startswith("truncated or corrupt")
    assert reasons[ODD_IMAGE_FILES["strip"]].startswith("too small: 1x4000")
    assert scan.found == 18
    assert len(scan.samples) == 15
    warnings = [event.message for event in events if event.kind == "warning"]
    assert len(warnings) == 3
    assert all(message.startswith("skipped ") for message in warnings)
    assert any("animated" in note for note in scan.notes)


def test_exif_rotated_sample_has_display_size(odd_image_dataset_dir: Path) -> None:
    (scan,) = _scan(DataConfig(concepts=[{"path": odd_image_dataset_dir}]))
    sample = next(s for s in scan.samples if s.path.name == ODD_IMAGE_FILES["exif_rotated"])
    assert (sample.width, sample.height) == (64, 96)
    assert sample.mask_path is not None


def test_captions_and_masks_are_counted(image_dataset_dir: Path, tmp_path: Path) -> None:
    folder = Path(shutil.copytree(image_dataset_dir, tmp_path / "images"))
    (folder / "img-001.txt").unlink()
    (folder / "img-002.txt").write_text("\n\n")
    (scan,) = _scan(DataConfig(concepts=[{"path": folder}]))
    assert scan.captions_missing == 2
    assert scan.masks_found == 4
    assert len(scan.samples) == 8


def test_if_missing_skip_skips_uncaptioned_images(image_dataset_dir: Path, tmp_path: Path) -> None:
    folder = Path(shutil.copytree(image_dataset_dir, tmp_path / "images"))
    (folder / "img-003.txt").unlink()
    (scan,) = _scan(DataConfig(concepts=[{"path": folder, "caption": {"if_missing": "skip"}}]))
    assert [(item.path.name, item.reason.split(" (")[0]) for item in scan.skipped] == [("img-003.png", "no caption")]


def test_bad_caption_bytes_are_noted(image_dataset_dir: Path, tmp_path: Path) -> None:
    folder = Path(shutil.copytree(image_dataset_dir, tmp_path / "images"))
    (folder / "img-000.txt").write_bytes(b"caf\xe9\n")
    (scan,) = _scan(DataConfig(concepts=[{"path": folder}]))
    assert any("not valid UTF-8" in note and "img-000.txt" in note for note in scan.notes)


def test_sample_ids_are_label_and_relative_path(image_dataset_dir: Path) -> None:
    data = DataConfig(concepts=[{"path": image_dataset_dir, "name": "cats"}, {"path": image_dataset_dir}])
    first, second = _scan(data)
    assert first.samples[0].id == "cats/img-000.png"
    assert second.samples[0].id == f"{image_dataset_dir.name}/img-000.png"


def test_disabled_concepts_are_not_scanned(image_dataset_dir: Path) -> None:
    (scan,) = _scan(DataConfig(concepts=[{"path": image_dataset_dir, "enabled": False}]))
    assert scan.found == 0
    assert scan.samples == []


def test_folder_removed_after_validation_is_a_config_error(tmp_path: Path) -> None:
    folder = tmp_path / "gone"
    folder.mkdir()
    data = DataConfig(concepts=[{"path": folder}])
    folder.rmdir()
    with pytest.raises(ConfigError) as info:
        _scan(data)
    assert info.value.problems[0].path == "data.concepts.0.path"


def test_memo_skips_verification_of_unchanged_files(image_dataset_dir: Path, tmp_path: Path, monkeypatch) -> None:
    memo_path = tmp_path / "files.json"
    data = DataConfig(concepts=[{"path": image_dataset_dir}])
    memo = FileMemo(memo_path)
    _scan(data, memo)
    memo.save()
    calls: list[Path] = []
    import onetrainer.data_loader.scan as scan_module

    monkeypatch.setattr(scan_module, "verify_image", calls.append)
    (scan,) = _scan(data, FileMemo(memo_path))
    assert calls == []
    assert len(scan.samples) == 8


def test_include_subdirectories_scans_nested_folders(tmp_path: Path, image_dataset_dir: Path) -> None:
    root = tmp_path / "root"
    shutil.copytree(image_dataset_dir, root / "nested")
    shutil.copy(next(image_dataset_dir.glob("*.png")), root / "top.png")
    (flat,) = _scan(DataConfig(concepts=[{"path": root}]))
    (deep,) = _scan(DataConfig(concepts=[{"path": root, "include_subdirectories": True}]))
    (alone,) = _scan(DataConfig(concepts=[{"path": image_dataset_dir}]))
    assert flat.found == 1
    assert deep.found == 1 + alone.found == 9
    assert any(sample.id.endswith("nested/img-000.png") for sample in deep.samples)


def test_sizes_come_from_headers_without_decoding_pixels(
    image_dataset_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from PIL import Image, ImageFile

    def no_decoding(self, *args, **kwargs):
        raise AssertionError("pixels were decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    monkeypatch.setattr(Image.Image, "load", no_decoding)
    (scan,) = _scan(DataConfig(concepts=[{"path": image_dataset_dir}], verify_images=False))
    assert scan.skipped == []
    assert len(scan.samples) == scan.found == 8
    assert all(sample.width > 0 and sample.height > 0 for sample in scan.samples)


@pytest.fixture
def pillow_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    """Scanning sets Pillow's process-wide pixel limit; put it back after the test."""
    from PIL import Image

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", Image.MAX_IMAGE_PIXELS)


def _with_giant(folder: Path, image_dataset_dir: Path, width: int, height: int) -> Path:
    folder.mkdir()
    shutil.copy(image_dataset_dir / "img-000.png", folder / "a.png")
    write_png_claiming_size(folder / "giant.png", width, height)
    return folder


@pytest.mark.usefixtures("pillow_limit")
def test_a_decompression_bomb_is_skipped_with_its_size(tmp_path: Path, image_dataset_dir: Path) -> None:
    folder = _with_giant(tmp_path / "images", image_dataset_dir, 15000, 15000)
    events: list[LoaderEvent] = []
    (scan,) = _scan(DataConfig(concepts=[{"path": folder}]), events=events)
    assert [sample.path.name for sample in scan.samples] == ["a.png"]
    ((path, reason),) = [(item.path, item.reason) for item in scan.skipped]
    assert path == folder / "giant.png"
    assert reason.startswith("too large: 225,000,000 pixels, above the limit of 178,956,970")
    assert "data.max_image_pixels" in reason
    assert any(event.kind == "warning" and "giant.png" in event.message for event in events)


@pytest.mark.usefixtures("pillow_limit")
def test_max_image_pixels_lets_a_trusted_giant_through(tmp_path: Path, image_dataset_dir: Path) -> None:
    folder = _with_giant(tmp_path / "images", image_dataset_dir, 15000, 15000)
    (scan,) = _scan(DataConfig(concepts=[{"path": folder}], max_image_pixels=300_000_000))
    assert sorted(sample.path.name for sample in scan.samples) == ["a.png", "giant.png"]
    assert scan.skipped == []


@pytest.mark.usefixtures("pillow_limit")
def test_an_image_below_the_limit_opens_without_a_raw_warning(tmp_path: Path, image_dataset_dir: Path) -> None:
    folder = _with_giant(tmp_path / "images", image_dataset_dir, 10000, 10000)  # above Pillow's warning point
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        (scan,) = _scan(DataConfig(concepts=[{"path": folder}]))
    assert len(scan.samples) == 2
    assert [str(warning.message) for warning in caught] == []


def test_a_broken_link_is_reported_as_skipped(tmp_path: Path, image_dataset_dir: Path) -> None:
    folder = _one_image(tmp_path, image_dataset_dir)
    (folder / "b.png").symlink_to(tmp_path / "moved-away.png")
    for recursive in (False, True):
        (scan,) = _scan(DataConfig(concepts=[{"path": folder, "include_subdirectories": recursive}]))
        assert scan.found == 2
        ((path, reason),) = [(item.path, item.reason) for item in scan.skipped]
        assert path == folder / "b.png"
        assert reason == f"broken symbolic link: its target {tmp_path / 'moved-away.png'} does not exist"


def test_an_empty_concept_folder_is_named_in_a_warning(tmp_path: Path, image_dataset_dir: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    events: list[LoaderEvent] = []
    _scan(DataConfig(concepts=[{"path": image_dataset_dir}, {"path": empty, "name": "dogs"}]), events=events)
    warned = [event.message for event in events if event.kind == "warning"]
    assert warned == [f"concept 'dogs' (data.concepts.1) holds no images: {empty}"]


def test_images_sharing_a_caption_file_are_named_in_a_warning(tmp_path: Path, image_dataset_dir: Path) -> None:
    """`img-000.png` and `img-000.jpg` both train with `img-000.txt` and its mask: they are used, and named."""
    folder = Path(shutil.copytree(image_dataset_dir, tmp_path / "images"))
    shutil.copy(folder / "img-001.jpg", folder / "img-000.jpg")
    events: list[LoaderEvent] = []
    (scan,) = _scan(DataConfig(concepts=[{"path": folder}]), events=events)
    message = (
        f"{folder / 'img-000.jpg'}, {folder / 'img-000.png'} share one caption file and one mask (img-000.txt, "
        "img-000-masklabel.png), which each of them trains with: rename all but one"
    )
    assert [event.message for event in events if event.kind == "warning"] == [message]
    assert scan.notes == [message]
    assert len(scan.samples) == scan.found


def test_a_file_replaced_with_its_old_size_and_mtime_is_hashed_again(tmp_path: Path) -> None:
    """`cp -p`, `rsync -t` and unpacking an archive keep modification times: the change time tells the copy."""
    import os
    import time

    from onetrainer.data_loader.memo import content_hash

    image = tmp_path / "a.bmp"
    image.write_bytes(b"red-" * 16)
    memo = FileMemo(tmp_path / "memo.json")
    before = content_hash(image, memo)
    stat = image.stat()
    time.sleep(0.01)
    replacement = tmp_path / "b.bmp"
    replacement.write_bytes(b"grn-" * 16)
    os.replace(replacement, image)
    os.utime(image, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert (image.stat().st_size, image.stat().st_mtime_ns) == (stat.st_size, stat.st_mtime_ns)
    assert content_hash(image, memo) != before


def test_an_image_whose_mask_is_corrupt_is_skipped_naming_the_mask(image_dataset_dir: Path, tmp_path: Path) -> None:
    folder = Path(shutil.copytree(image_dataset_dir, tmp_path / "images"))
    mask = folder / "img-000-masklabel.png"
    mask.write_bytes(mask.read_bytes()[:40])
    (scan,) = _scan(DataConfig(concepts=[{"path": folder}]))
    (skipped,) = scan.skipped
    assert skipped.path == folder / "img-000.png"
    assert "img-000-masklabel.png" in skipped.reason
    assert len(scan.samples) == 7
    (unverified,) = _scan(DataConfig(concepts=[{"path": folder}], verify_images=False))
    assert len(unverified.samples) == 8, "unverified, the mask is found when the cache decodes it"


def _one_image(tmp_path: Path, image_dataset_dir: Path) -> Path:
    """A folder `images` holding one good image, `a.png`."""
    folder = tmp_path / "images"
    folder.mkdir()
    shutil.copy(image_dataset_dir / "img-000.png", folder / "a.png")
    return folder


def _names(scan) -> list[str]:
    return sorted(sample.path.name for sample in scan.samples)


def _raising(error: Exception) -> Callable[..., NoReturn]:
    """A stand-in for a call that fails with `error`, as a failing disk would make it."""

    def fail(*args: object, **kwargs: object) -> NoReturn:
        raise error

    return fail


def _scan_saved(data: DataConfig, memo_path: Path):
    """A scan as a run does it: the memo read from and written back to `memo_path`."""
    memo = FileMemo(memo_path)
    (scan,) = _scan(data, memo)
    memo.save()
    return scan


@pytest.mark.usefixtures("pillow_limit")
def test_too_large_is_remembered_only_under_the_limit_it_was_found_with(
    tmp_path: Path, image_dataset_dir: Path
) -> None:
    """The skip message says to raise data.max_image_pixels: doing so must bring the file back at once, and
    lowering the limit again must skip it although its size is remembered."""
    folder = _with_giant(tmp_path / "images", image_dataset_dir, 15000, 15000)
    memo_path = tmp_path / "files.json"
    default = DataConfig(concepts=[{"path": folder}])
    raised = DataConfig(concepts=[{"path": folder}], max_image_pixels=None)
    assert _names(_scan_saved(default, memo_path)) == ["a.png"]
    assert _names(_scan_saved(default, memo_path)) == ["a.png"]
    assert _names(_scan_saved(raised, memo_path)) == ["a.png", "giant.png"]
    lowered = _scan_saved(default, memo_path)
    assert _names(lowered) == ["a.png"]
    assert [item.reason[:40] for item in lowered.skipped] == ["too large: 225,000,000 pixels, above the"]


def test_a_failed_read_is_tried_again_on_the_next_scan(
    tmp_path: Path, image_dataset_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from PIL import Image

    folder = _one_image(tmp_path, image_dataset_dir)
    memo_path = tmp_path / "files.json"
    data = DataConfig(concepts=[{"path": folder}])
    with monkeypatch.context() as patch:
        patch.setattr(Image, "open", _raising(OSError(5, "Input/output error")))
        failed = _scan_saved(data, memo_path)
    assert [item.reason for item in failed.skipped] == ["unreadable: [Errno 5] Input/output error"]
    assert _names(_scan_saved(data, memo_path)) == ["a.png"]


def test_a_skip_remembered_by_an_older_version_is_checked_again(tmp_path: Path, image_dataset_dir: Path) -> None:
    """Older memos kept every skip for good, too large and failed reads included."""
    folder = _one_image(tmp_path, image_dataset_dir)
    memo_path = tmp_path / "files.json"
    memo = FileMemo(memo_path)
    memo.update(folder / "a.png", error="unreadable: [Errno 5] Input/output error")
    memo.save()
    assert _names(_scan_saved(DataConfig(concepts=[{"path": folder}]), memo_path)) == ["a.png"]
    assert "error" not in FileMemo(memo_path).record(folder / "a.png")


def test_a_corrupt_file_stays_remembered(
    tmp_path: Path, image_dataset_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the bytes decide (here a cut-off file) is still remembered: unchanged, it is not read again."""
    folder = _one_image(tmp_path, image_dataset_dir)
    (folder / "b.png").write_bytes((folder / "a.png").read_bytes()[:60])
    memo_path = tmp_path / "files.json"
    data = DataConfig(concepts=[{"path": folder}])
    first = _scan_saved(data, memo_path)
    import onetrainer.data_loader.scan as scan_module

    monkeypatch.setattr(scan_module, "read_header", lambda path: pytest.fail(f"{path} read again"))
    again = _scan_saved(data, memo_path)
    assert _names(again) == ["a.png"]
    assert again.skipped == first.skipped


def test_a_read_failing_while_verifying_is_tried_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An error number means the system failed to read (an I/O error); Pillow's complaints about data carry none."""
    from PIL import Image, PngImagePlugin

    folder = tmp_path / "images"
    folder.mkdir()
    Image.new("RGB", (64, 64), (200, 10, 10)).save(folder / "a.png")
    memo_path = tmp_path / "files.json"
    data = DataConfig(concepts=[{"path": folder}])
    with monkeypatch.context() as patch:
        patch.setattr(PngImagePlugin.PngImageFile, "verify", _raising(OSError(5, "I/O error")))
        failed = _scan_saved(data, memo_path)
    assert [item.reason for item in failed.skipped] == ["unreadable: [Errno 5] I/O error"]
    assert _names(_scan_saved(data, memo_path)) == ["a.png"]
