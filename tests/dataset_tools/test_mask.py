"""`mask_folder`: colour masks pixel by pixel, mask shaping, modes on disk, CLIPSeg end to end."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from onetrainer.dataset_tools.mask import (
    MaskMode,
    MaskRequest,
    combine_masks,
    expand_mask,
    mask_folder,
    smooth_mask,
)
from onetrainer.dataset_tools.maskers.color import ColorMasker, parse_colour
from onetrainer.dataset_tools.tiny import save_tiny_clipseg
from onetrainer.util.errors import UserError
from onetrainer.util.tiny.dataset import UNREADABLE_ODD_FILES, make_image_dataset

RED, NEAR_RED, BLUE, WHITE = (255, 0, 0), (240, 10, 5), (0, 0, 255), (255, 255, 255)


def _stripes(path: Path) -> Path:
    """A 4x2 image: row 0 red, near-red, blue, white; row 1 white, blue, red, near-red."""
    pixels = np.array([[RED, NEAR_RED, BLUE, WHITE], [WHITE, BLUE, RED, NEAR_RED]], dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return path


def _read(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        assert image.mode == "L"
        return np.asarray(image)


def _color_request(folder: Path, **changes: object) -> MaskRequest:
    settings: dict[str, object] = {"prompts": ["red"], "model": "color", "threshold": 0.1, "smooth": 0, "expand": 0}
    settings.update(changes)
    return MaskRequest(folder, **settings)


def test_parse_colour_accepts_names_hex_and_triples() -> None:
    assert parse_colour("red") == RED
    assert parse_colour("#0000ff") == BLUE
    assert parse_colour("240, 10, 5") == NEAR_RED
    with pytest.raises(UserError, match="not a colour"):
        parse_colour("reddish")


def test_color_mask_pixel_by_pixel(tmp_path: Path) -> None:
    image = Image.open(_stripes(tmp_path / "s.png"))
    # NEAR_RED is sqrt(15²+10²+5²)=18.7 from red, 0.042 of the largest distance.
    loose = ColorMasker.from_prompts(["red"], threshold=0.05).masks([image])[0]
    exact = ColorMasker.from_prompts(["red"], threshold=0.0).masks([image])[0]
    two = ColorMasker.from_prompts(["red", "#0000ff"], threshold=0.0).masks([image])[0]

    np.testing.assert_array_equal(loose, [[1, 1, 0, 0], [0, 0, 1, 1]])
    np.testing.assert_array_equal(exact, [[1, 0, 0, 0], [0, 0, 1, 0]])
    np.testing.assert_array_equal(two, [[1, 0, 1, 0], [0, 1, 1, 0]])


def test_expand_grows_by_exactly_n_pixels_in_a_square() -> None:
    mask = np.zeros((7, 7), dtype=np.float32)
    mask[3, 3] = 1.0

    grown = expand_mask(mask, 2)

    expected = np.zeros((7, 7), dtype=np.float32)
    expected[1:6, 1:6] = 1.0
    np.testing.assert_array_equal(grown, expected)
    np.testing.assert_array_equal(expand_mask(mask, 0), mask)


def test_smooth_softens_edges_but_keeps_the_centre() -> None:
    mask = np.zeros((21, 21), dtype=np.float32)
    mask[5:16, 5:16] = 1.0

    smooth = smooth_mask(mask, 2)

    assert smooth[10, 10] == pytest.approx(1.0, abs=0.01)
    assert smooth[0, 0] == pytest.approx(0.0, abs=0.01)
    assert 0.0 < smooth[10, 4] < 1.0


def test_combine_modes() -> None:
    old = np.array([0.0, 0.5, 1.0], dtype=np.float32)
    new = np.array([1.0, 1.0, 0.0], dtype=np.float32)

    np.testing.assert_allclose(combine_masks(old, new, MaskMode.REPLACE, 0.5), [1.0, 1.0, 0.0])
    np.testing.assert_allclose(combine_masks(old, new, MaskMode.ADD, 0.5), [0.5, 1.0, 1.0])
    np.testing.assert_allclose(combine_masks(old, new, MaskMode.SUBTRACT, 0.5), [0.0, 0.0, 1.0])
    np.testing.assert_allclose(combine_masks(old, new, MaskMode.BLEND, 0.25), [0.25, 0.625, 0.75])
    np.testing.assert_allclose(combine_masks(None, new, MaskMode.ADD, 1.0), [1.0, 1.0, 0.0])
    np.testing.assert_allclose(combine_masks(None, new, MaskMode.SUBTRACT, 1.0), [0.0, 0.0, 1.0])


def test_color_mask_folder_writes_masks_beside_images(tmp_path: Path) -> None:
    _stripes(tmp_path / "a.png")

    summary = mask_folder(_color_request(tmp_path))

    assert [path.name for path in summary.written] == ["a-masklabel.png"]
    np.testing.assert_array_equal(_read(tmp_path / "a-masklabel.png"), [[255, 255, 0, 0], [0, 0, 255, 255]])


def test_mask_modes_combine_with_the_mask_on_disk(tmp_path: Path) -> None:
    _stripes(tmp_path / "a.png")
    existing = np.array([[0, 0, 255, 255], [0, 0, 0, 0]], dtype=np.uint8)
    Image.fromarray(existing, mode="L").save(tmp_path / "a-masklabel.png")

    kept = mask_folder(_color_request(tmp_path, mode=MaskMode.FILL))
    assert [path.name for path in kept.kept] == ["a.png"]
    np.testing.assert_array_equal(_read(tmp_path / "a-masklabel.png"), existing)

    mask_folder(_color_request(tmp_path, mode=MaskMode.ADD))
    np.testing.assert_array_equal(_read(tmp_path / "a-masklabel.png"), [[255, 255, 255, 255], [0, 0, 255, 255]])

    mask_folder(_color_request(tmp_path, mode=MaskMode.SUBTRACT, prompts=["white"], threshold=0.0))
    np.testing.assert_array_equal(_read(tmp_path / "a-masklabel.png"), [[255, 255, 255, 0], [0, 0, 255, 255]])

    mask_folder(_color_request(tmp_path, mode=MaskMode.BLEND, prompts=["blue"], threshold=0.0, alpha=0.5))
    np.testing.assert_array_equal(_read(tmp_path / "a-masklabel.png"), [[128, 128, 255, 0], [0, 128, 128, 128]])

    mask_folder(_color_request(tmp_path, mode=MaskMode.REPLACE, prompts=["blue"], threshold=0.0))
    np.testing.assert_array_equal(_read(tmp_path / "a-masklabel.png"), [[0, 0, 255, 0], [0, 255, 0, 0]])


def test_existing_mask_is_read_at_the_displayed_image_size(tmp_path: Path) -> None:
    _stripes(tmp_path / "a.png")
    Image.new("L", (8, 4), 255).save(tmp_path / "a-masklabel.png")

    mask_folder(_color_request(tmp_path, mode=MaskMode.SUBTRACT))

    np.testing.assert_array_equal(_read(tmp_path / "a-masklabel.png"), [[0, 0, 255, 255], [255, 255, 0, 0]])


def test_unreadable_existing_mask_is_reported_and_left_alone(tmp_path: Path) -> None:
    _stripes(tmp_path / "a.png")
    (tmp_path / "a-masklabel.png").write_bytes(b"not a png")

    summary = mask_folder(_color_request(tmp_path, mode=MaskMode.ADD))

    assert [(path.name, reason.split(":")[0]) for path, reason in summary.failed] == [("a.png", "a-masklabel.png")]
    assert (tmp_path / "a-masklabel.png").read_bytes() == b"not a png"


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"prompts": []}, "no prompt"),
        ({"alpha": 1.5}, "alpha"),
        ({"threshold": -0.1}, "threshold"),
        ({"expand": -1}, "pixels"),
    ],
)
def test_invalid_requests_are_user_errors(tmp_path: Path, changes: dict[str, object], message: str) -> None:
    with pytest.raises(UserError, match=message):
        mask_folder(_color_request(tmp_path, **changes))


@pytest.fixture(scope="module")
def clipseg_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_clipseg(tmp_path_factory.mktemp("maskers") / "clipseg")


def test_clipseg_masks_every_readable_image_at_its_size(clipseg_dir: Path, tmp_path: Path) -> None:
    folder = make_image_dataset(tmp_path / "odd", count=3, with_captions=False, with_masks=False, odd_images=True)

    summary = mask_folder(
        MaskRequest(folder, prompts=["a cat", "a dog"], model=str(clipseg_dir), smooth=0, expand=0, batch_size=4)
    )

    assert sorted(path.name for path, _ in summary.failed) == sorted(UNREADABLE_ODD_FILES)
    assert len(summary.written) == summary.found - len(UNREADABLE_ODD_FILES)
    for mask in summary.written:
        image = next(folder.glob(mask.name.replace("-masklabel.png", ".*")))
        with Image.open(mask) as written, Image.open(image) as source:
            assert written.mode == "L"
            assert written.size == (source.size if "exif" not in image.name else source.size[::-1])
            assert set(np.unique(np.asarray(written)).tolist()) <= {0, 255}


def test_clipseg_batching_and_threshold(clipseg_dir: Path, tmp_path: Path) -> None:
    one = make_image_dataset(tmp_path / "one", count=5, with_captions=False, with_masks=False)
    many = shutil.copytree(one, tmp_path / "many")

    def request(folder: Path, **changes: object) -> MaskRequest:
        settings = {"prompts": ["a cat"], "model": str(clipseg_dir), "smooth": 0, "expand": 0, "mode": MaskMode.REPLACE}
        settings.update(changes)  # (on the CPU: a GPU's kernels may differ by batch size, in the last bit)
        return MaskRequest(folder, device="cpu", **settings)

    mask_folder(request(one, batch_size=1))
    mask_folder(request(many, batch_size=5))
    for mask in sorted(one.glob("*-masklabel.png")):
        np.testing.assert_array_equal(_read(mask), _read(many / mask.name))

    mask_folder(request(one, threshold=0.0))
    mask_folder(request(many, threshold=1.0))
    assert all(_read(mask).min() == 255 for mask in one.glob("*-masklabel.png"))
    assert all(_read(mask).max() == 0 for mask in many.glob("*-masklabel.png"))


def test_unavailable_clipseg_hub_model_is_a_user_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    _stripes(tmp_path / "a.png")
    with pytest.raises(UserError, match="CIDAS/clipseg-rd64-refined"):
        mask_folder(MaskRequest(tmp_path, prompts=["a cat"], model="clipseg"))
