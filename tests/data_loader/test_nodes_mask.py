"""Mask augmentations: the circular shrink and the mask-centred rotate-crop, before the bucket's crop."""

from __future__ import annotations

import math
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from onetrainer.data_loader.graph import Graph, SampleContext
from onetrainer.data_loader.nodes_mask import plan_rotate_crop, shrink_to_disc
from onetrainer.data_loader.pipeline import image_graph
from onetrainer.data_loader.scan import Sample
from onetrainer.util.config.data import ConceptConfig

MASKED = image_graph(mask_augmentation=True)
PLAIN = image_graph()
SUBJECT = (60, 40, 100, 70)
"""(left, top, right, bottom) of the red, masked subject in the 160 x 120 test image."""

SHRINK = {"mask_shrink": {"enabled": True}}
CROP = {"mask_rotate_crop": {"enabled": True, "rotation": 30, "min_size": 0.3}}


def _subject(path: Path, *, mask: bool = True) -> Path:
    """Grey 160 x 120 image with a red rectangle at SUBJECT; its mask is white exactly there."""
    array = np.full((120, 160, 3), 100, dtype=np.uint8)
    left, top, right, bottom = SUBJECT
    array[top:bottom, left:right] = (230, 30, 30)
    Image.fromarray(array).save(path)
    if mask:
        grey = np.zeros((120, 160), dtype=np.uint8)
        grey[top:bottom, left:right] = 255
        Image.fromarray(grey).save(path.with_name(f"{path.stem}-masklabel.png"))
    return path


def _run(
    path: Path,
    *,
    image: dict[str, Any] | None = None,
    variation: int = 0,
    target: tuple[int, int] = (48, 64),
    wanted: tuple[str, ...] = ("pixels", "mask", "crop_top_left", "original_size"),
    graph: Graph = MASKED,
) -> dict[str, Any]:
    with Image.open(path) as opened:
        width, height = opened.size
    mask_path = path.with_name(f"{path.stem}-masklabel.png")
    mask_path = mask_path if mask_path.exists() else None
    sample = Sample("c/" + path.name, 0, path, height, width, mask_path, None)
    concept = ConceptConfig(path=path.parent, image=image or {})
    context = SampleContext(sample, concept, (1, 0, "image", variation, 0, sample.id))
    sources = {"image_path": path, "mask_path": mask_path, "source_size": (height, width), "target_size": target}
    return graph.run(context, sources, wanted)


def _blob(height: int = 80, width: int = 100) -> np.ndarray:
    """A soft-edged ellipse: strong inside, faint grey values on its rim, like real mask files."""
    ys, xs = np.indices((height, width))
    distance = ((ys - 35) / 25) ** 2 + ((xs - 55) / 35) ** 2
    return (np.clip(1.5 - distance, 0, 1) * 255).astype(np.uint8)


def _redness(image: Image.Image) -> np.ndarray:
    array = np.asarray(image, dtype=np.float32)
    return np.clip((array[..., 0] - array[..., 1]) / 200.0, 0, 1)


# --- circular shrink ----------------------------------------------------------------------------


def test_shrink_keeps_exactly_the_mask_inside_a_disc() -> None:
    mask = _blob()
    for seed in range(10):
        shrunk, (cy, cx), radius = shrink_to_disc(mask, random.Random(seed), 0.2, 0.9)
        ys, xs = np.indices(mask.shape)
        disc = (ys - cy) ** 2 + (xs - cx) ** 2 <= radius**2
        assert np.array_equal(shrunk, np.where(disc, mask, 0)), "the mask, cut to the disc"
        assert (shrunk <= mask).all(), "a subset of the original"
        assert mask[cy, cx] >= 128, "centred on the subject, not on a faint rim"
        reach = math.sqrt((((ys - cy) ** 2 + (xs - cx) ** 2)[mask > 0]).max())
        assert 0.2 * reach - 1e-9 <= radius <= 0.9 * reach + 1e-9


def test_shrunk_full_mask_is_a_disc() -> None:
    full = np.full((64, 64), 255, dtype=np.uint8)
    shrunk, (cy, cx), radius = shrink_to_disc(full, random.Random(3), 0.5, 0.5)
    ys, xs = np.indices(full.shape)
    assert np.array_equal(shrunk > 0, (ys - cy) ** 2 + (xs - cx) ** 2 <= radius**2)
    assert 0 < (shrunk > 0).sum() < full.size


def test_empty_mask_is_not_shrunk() -> None:
    assert shrink_to_disc(np.zeros((8, 8), dtype=np.uint8), random.Random(0), 0.2, 1.0) is None


def test_shrink_is_keyed_by_variation(tmp_path: Path) -> None:
    path = _subject(tmp_path / "a.png")
    masks = [
        np.asarray(_run(path, image=SHRINK, variation=v, wanted=("mask.shrunk",))["mask.shrunk"]) for v in (0, 0, 1)
    ]
    assert np.array_equal(masks[0], masks[1]), "same key, same disc"
    assert not np.array_equal(masks[0], masks[2]), "another variation, another disc"


def test_shrunk_training_mask_stays_within_the_original(tmp_path: Path) -> None:
    path = _subject(tmp_path / "a.png")
    shrunk_any = False
    for variation in range(4):
        original = _run(path, variation=variation, graph=PLAIN)
        out = _run(path, image=SHRINK, variation=variation)
        assert (out["mask"] <= original["mask"]).all()
        assert torch.equal(out["pixels"], original["pixels"]), "the image is untouched"
        shrunk_any |= bool((out["mask"] < original["mask"]).any())
    assert shrunk_any


# --- mask-centred rotate-crop -------------------------------------------------------------------


@pytest.mark.parametrize("variation", range(6))
def test_rotate_crop_keeps_the_mask_inside_and_aligned(tmp_path: Path, variation: int) -> None:
    path = _subject(tmp_path / "a.png")
    out = _run(path, image=CROP, variation=variation, wanted=("image.mask_cropped", "mask.mask_cropped"))
    image, mask = out["image.mask_cropped"], out["mask.mask_cropped"]
    assert image.size == mask.size
    assert image.width < 160, "zoomed in on the subject"
    assert abs(image.height / image.width - 120 / 160) < 0.05, "the aspect ratio the bucket was planned for"
    weights = np.asarray(mask, dtype=np.float32) / 255
    left, top, right, bottom = SUBJECT
    assert weights.sum() == pytest.approx((right - left) * (bottom - top), rel=0.03), "all of the mask is inside"
    border = np.concatenate([weights[0], weights[-1], weights[:, 0], weights[:, -1]])
    assert border.max() < 0.05, "padding around it"
    assert np.abs(_redness(image) - weights).mean() < 0.03, "image and mask moved together"


def test_unrotated_crop_is_an_exact_cut_with_padding(tmp_path: Path) -> None:
    path = _subject(tmp_path / "a.png")
    padded = {"rotation": 0, "min_padding": 0.2, "max_padding": 0.2, "min_size": 0.1}
    settings = {"mask_rotate_crop": {"enabled": True, **padded}}
    out = _run(path, image=settings, wanted=("image.mask_cropped", "mask.mask_cropped", "resize_box.mask_cropped"))
    mask = np.asarray(out["mask.mask_cropped"])
    top, left = (int(index.min()) for index in np.nonzero(mask))
    source = np.asarray(Image.open(path))
    crop_left, crop_top = SUBJECT[0] - left, SUBJECT[1] - top
    width, height = out["image.mask_cropped"].size
    assert np.array_equal(
        np.asarray(out["image.mask_cropped"]), source[crop_top : crop_top + height, crop_left : crop_left + width]
    )
    assert (mask > 0).sum() == 40 * 30
    assert (width, height) == (56, 42), "the subject (40 x 30) plus 20 % on each side"
    planned = _run(path, wanted=("resize_box",))["resize_box"]
    scaled = out["resize_box.mask_cropped"]
    assert scaled[2] / planned[2] == pytest.approx(width / 160)


def test_rotate_crop_is_keyed_by_variation(tmp_path: Path) -> None:
    path = _subject(tmp_path / "a.png")
    crops = [
        _run(path, image=CROP, variation=v, wanted=("image.mask_cropped",))["image.mask_cropped"] for v in (2, 2, 3)
    ]
    assert np.array_equal(np.asarray(crops[0]), np.asarray(crops[1])), "same key, same crop"
    assert not np.array_equal(np.asarray(crops[0]), np.asarray(crops[2])), "another variation, another crop"


def test_rotate_crop_zooms_in_and_keeps_the_bucket(tmp_path: Path) -> None:
    path = _subject(tmp_path / "a.png")
    plain = _run(path, graph=PLAIN)
    out = _run(path, image=CROP)
    assert out["pixels"].shape == plain["pixels"].shape == (3, 48, 64)
    assert out["mask"].shape == plain["mask"].shape == (1, 48, 64)
    assert out["mask"].float().mean() > 1.5 * plain["mask"].float().mean(), "the subject fills more of the bucket"
    assert (out["crop_top_left"], out["original_size"]) == (plain["crop_top_left"], plain["original_size"])


def test_planned_crop_always_holds_the_box_inside_the_image() -> None:
    rng = random.Random(0)
    for _ in range(500):
        width, height = rng.randint(16, 400), rng.randint(16, 400)
        left, top = rng.randint(0, width - 1), rng.randint(0, height - 1)
        box = (left, top, rng.randint(left + 1, width), rng.randint(top + 1, height))
        angle = math.radians(rng.uniform(-180, 180))
        (crop_w, crop_h), (cx, cy), used = plan_rotate_crop(
            (width, height), box, angle=angle, padding=rng.uniform(0, 0.5), min_size=rng.uniform(0.05, 1)
        )
        cos, sin = math.cos(used), math.sin(used)
        assert used in (angle, 0.0)
        assert 1 <= crop_w <= width
        assert 1 <= crop_h <= height
        assert abs(crop_h / crop_w - height / width) <= 1 / crop_w + 1 / crop_h + 1e-9, "the image's aspect ratio"
        for dx, dy in ((-1, -1), (1, -1), (-1, 1), (1, 1)):
            x = cx + cos * dx * crop_w / 2 - sin * dy * crop_h / 2
            y = cy + sin * dx * crop_w / 2 + cos * dy * crop_h / 2
            assert -1e-6 <= x <= width + 1e-6, "nothing outside the image"
            assert -1e-6 <= y <= height + 1e-6, "nothing outside the image"
        for x, y in ((box[0], box[1]), (box[2], box[1]), (box[0], box[3]), (box[2], box[3])):
            u, v = cos * (x - cx) + sin * (y - cy), -sin * (x - cx) + cos * (y - cy)
            assert abs(u) <= crop_w / 2 + 1e-6, "the mask's box inside the crop"
            assert abs(v) <= crop_h / 2 + 1e-6, "the mask's box inside the crop"


# --- off means unchanged ------------------------------------------------------------------------

OTHER = {"flip": 0.5, "rotation": 10, "brightness": 0.2}
BOTH_NEVER = {
    "mask_shrink": {"enabled": True, "probability": 0},
    "mask_rotate_crop": {"enabled": True, "probability": 0},
}


@pytest.mark.parametrize("settings", [{}, BOTH_NEVER], ids=["disabled", "probability-0"])
def test_inactive_mask_augmentation_is_bit_identical(tmp_path: Path, settings: dict[str, Any]) -> None:
    path = _subject(tmp_path / "a.png")
    for variation in range(3):
        before = _run(path, image=OTHER, variation=variation, graph=PLAIN)
        after = _run(path, image={**OTHER, **settings}, variation=variation)
        for key, value in before.items():
            assert torch.equal(value, after[key]) if isinstance(value, torch.Tensor) else value == after[key], key


def test_images_without_a_mask_are_left_alone(tmp_path: Path) -> None:
    path = _subject(tmp_path / "a.png", mask=False)
    before = _run(path, image=OTHER, graph=PLAIN)
    after = _run(path, image={**OTHER, **SHRINK, **CROP})
    assert torch.equal(before["pixels"], after["pixels"])
    assert torch.equal(before["mask"], after["mask"])


def test_graph_gains_the_mask_nodes_only_when_asked() -> None:
    assert "mask_shrink" not in PLAIN.describe()
    described = MASKED.describe()
    names = [node.name for node in MASKED.order]
    assert names.index("mask_source") < names.index("mask_shrink") < names.index("mask_rotate_crop")
    assert names.index("mask_rotate_crop") < names.index("resize_crop")
    assert "[image.mask_shrink]" in described
    assert "[image.mask_rotate_crop]" in described
    assert [node.name for node in MASKED.plan(["crop_top_left"])] == ["flip", "geometry"], "geometry needs no decoding"
