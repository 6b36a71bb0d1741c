"""Image nodes: the crop, the resampling, and augmentations applied alike to image and mask."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from onetrainer.data_loader.graph import SampleContext
from onetrainer.data_loader.pipeline import image_graph
from onetrainer.data_loader.scan import Sample
from onetrainer.util.config.data import ConceptConfig

GRAPH = image_graph()


def _two_halves(path: Path, width: int = 64, height: int = 64) -> Path:
    """Left half red, right half blue; its mask is white (train) on the left half only."""
    array = np.zeros((height, width, 3), dtype=np.uint8)
    array[:, : width // 2] = (255, 0, 0)
    array[:, width // 2 :] = (0, 0, 255)
    Image.fromarray(array).save(path)
    mask = np.zeros((height, width), dtype=np.uint8)
    mask[:, : width // 2] = 255
    Image.fromarray(mask).save(path.with_name(f"{path.stem}-masklabel.png"))
    return path


def _run(
    path: Path,
    target: tuple[int, int],
    *,
    image: dict[str, Any] | None = None,
    variation: int = 0,
    mask: bool = True,
    wanted: tuple[str, ...] = ("pixels", "mask", "crop_top_left", "original_size"),
) -> dict[str, Any]:
    with Image.open(path) as opened:
        width, height = opened.size
    mask_path = path.with_name(f"{path.stem}-masklabel.png") if mask else None
    sample = Sample("c/" + path.name, 0, path, height, width, mask_path, None)
    concept = ConceptConfig(path=path.parent, image=image or {})
    context = SampleContext(sample, concept, (1, 0, "image", variation, 0, sample.id))
    sources = {"image_path": path, "mask_path": mask_path, "source_size": (height, width), "target_size": target}
    return GRAPH.run(context, sources, wanted)


def test_output_types_and_ranges(tmp_path: Path) -> None:
    out = _run(_two_halves(tmp_path / "a.png"), (32, 32))
    assert out["pixels"].shape == (3, 32, 32)
    assert out["pixels"].dtype == torch.float32
    assert out["pixels"].min() >= -1
    assert out["pixels"].max() <= 1
    assert out["mask"].shape == (1, 32, 32)
    assert out["mask"].dtype == torch.uint8


def test_centred_crop_without_jitter(tmp_path: Path) -> None:
    path = _two_halves(tmp_path / "wide.png", width=128, height=64)
    out = _run(path, (64, 64), image={"crop_jitter": 0})
    assert out["crop_top_left"] == (0, 32)
    assert out["original_size"] == (64, 128)
    red, blue = out["pixels"][0], out["pixels"][2]
    assert red[:, :30].mean() > 0.9
    assert blue[:, 34:].mean() > 0.9


def test_jittered_crop_moves_within_the_slack(tmp_path: Path) -> None:
    path = _two_halves(tmp_path / "wide.png", width=128, height=64)
    lefts = {_run(path, (64, 64), variation=v, wanted=("crop_top_left",))["crop_top_left"][1] for v in range(20)}
    assert len(lefts) > 5
    assert min(lefts) >= 0
    assert max(lefts) <= 64


def test_downscaling_is_antialiased(tmp_path: Path) -> None:
    checker = (np.indices((128, 128)).sum(axis=0) % 2 * 255).astype(np.uint8)
    path = tmp_path / "checker.png"
    Image.fromarray(checker).convert("RGB").save(path)
    pixels = _run(path, (32, 32), mask=False)["pixels"]
    assert abs(float(pixels.mean())) < 0.05
    assert float(pixels.std()) < 0.05


def test_flip_moves_image_and_mask_together(tmp_path: Path) -> None:
    out = _run(_two_halves(tmp_path / "a.png"), (32, 32), image={"flip": 1.0})
    assert out["pixels"][2][:, :14].mean() > 0.9, "blue is now on the left"
    assert out["mask"][0, :, 18:].float().mean() > 250
    assert out["mask"][0, :, :14].max() == 0


def test_rotation_masks_out_the_corners(tmp_path: Path) -> None:
    path = tmp_path / "plain.png"
    Image.new("RGB", (64, 64), (120, 120, 120)).save(path)
    mask = _run(path, (64, 64), image={"rotation": 45}, variation=3, mask=False)["mask"][0]
    assert mask[32, 32] == 255
    again = _run(path, (64, 64), image={"rotation": 45}, variation=3, mask=False)["mask"]
    assert torch.equal(mask, again[0]), "same key, same rotation"
    assert min(mask[0, 0], mask[0, -1], mask[-1, 0], mask[-1, -1]) < 255


@pytest.mark.parametrize("setting", ["brightness", "contrast", "saturation", "hue"])
def test_colour_augmentation_changes_the_image_but_not_the_mask(tmp_path: Path, setting: str) -> None:
    path = tmp_path / "colour.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(path)
    Image.new("L", (32, 32), 255).save(tmp_path / "colour-masklabel.png")
    base = _run(path, (32, 32))
    changed = _run(path, (32, 32), image={setting: 0.4})
    assert not torch.allclose(base["pixels"], changed["pixels"])
    assert torch.equal(base["mask"], changed["mask"])


def test_hue_shift_keeps_luminance(tmp_path: Path) -> None:
    path = tmp_path / "muted.png"
    Image.fromarray(np.random.default_rng(1).integers(60, 190, (32, 32, 3), dtype=np.uint8)).save(path)
    weights = torch.tensor([0.299, 0.587, 0.114])[:, None, None]
    base = (_run(path, (32, 32), mask=False)["pixels"] * weights).sum(0)
    shifted = (_run(path, (32, 32), image={"hue": 0.3}, mask=False)["pixels"] * weights).sum(0)
    assert torch.allclose(base, shifted, atol=0.02)


def test_alpha_becomes_the_mask_only_when_asked(tmp_path: Path) -> None:
    rgba = Image.new("RGBA", (32, 32), (0, 255, 0, 255))
    rgba.paste((0, 0, 0, 0), (0, 0, 16, 32))
    path = tmp_path / "cutout.png"
    rgba.save(path)
    flattened = _run(path, (32, 32), mask=False)
    assert flattened["mask"].min() == 255
    assert flattened["pixels"][:, :, :14].min() > 0.99, "transparent half flattened onto white"
    masked = _run(path, (32, 32), image={"alpha": "mask"}, mask=False)
    assert masked["mask"][0, :, :14].max() == 0
    assert masked["mask"][0, :, 18:].min() == 255
