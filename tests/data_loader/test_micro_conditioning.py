"""Size conditioning (original size, crop top-left, target size) equals the crop the model actually sees.

Every image encodes its own coordinates in its pixels (red = column, green = row), so the pixels of a
batch say which part of the source they show and whether they are mirrored; the batch's
`crop_top_left` must name that crop, in the resized image as the model sees it (mirrored with the
image after a flip, as sd-scripts computes it). With a cache, the pixels come from cache entries and
the crop from header sizes alone, so the two paths are checked against each other here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from onetrainer.data_loader import build_data_loader

SIZES = [(64, 256), (64, 200), (256, 64), (160, 64)]
"""(height, width) of the sources: each covers the 64x64 crop at scale 1 (no resampling), with slack on one
side; bucketing is off, so every sample is cropped to 64x64 and the pixels keep exact coordinates."""


class PixelEncoder:
    """An image "encoder" whose cached latents are the pixels themselves, so cached crops can be checked."""

    def identity(self) -> str:
        return "pixels:v1"

    def load(self) -> None:
        pass

    def unload(self) -> None:
        pass

    def encode(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"latents": images.clone()}


@pytest.fixture
def coordinate_images(tmp_path: Path) -> Path:
    folder = tmp_path / "coordinates"
    folder.mkdir()
    for index, (height, width) in enumerate(SIZES):
        pixels = np.zeros((height, width, 3), dtype=np.uint8)
        pixels[..., 0] = np.arange(width)[None, :]
        pixels[..., 1] = np.arange(height)[:, None]
        Image.fromarray(pixels).save(folder / f"{index}.png")
        (folder / f"{index}.txt").write_text("coordinates", encoding="utf-8")
    return folder


def _coordinates(pixels: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """(source column of each output column, source row of each output row) from [3, H, W] in [-1, 1]."""
    values = ((pixels.float() + 1) / 2 * 255).round().to(torch.int64).numpy()
    return values[0, 0, :], values[1, :, 0]


def _check(batch: dict[str, Any], images: torch.Tensor) -> list[tuple[bool, int, int]]:
    """Assert each sample's pixels are its `crop_top_left` crop; returns (flipped, top, left) per sample."""
    seen = []
    for pixels, original, crop, target in zip(
        images, batch["original_size"], batch["crop_top_left"], batch["target_size"], strict=True
    ):
        height, width = (int(v) for v in original)
        top, left = (int(v) for v in crop)
        assert tuple(int(v) for v in target) == (64, 64) == tuple(pixels.shape[-2:])
        columns, rows = _coordinates(pixels)
        flipped = bool(columns[1] < columns[0])
        seen_columns = width - 1 - np.arange(width) if flipped else np.arange(width)
        assert np.array_equal(columns, seen_columns[left : left + 64]), (flipped, left, columns[:4])
        assert np.array_equal(rows, np.arange(height)[top : top + 64]), (top, rows[:4])
        seen.append((flipped, top, left))
    return seen


@pytest.mark.parametrize("cache", [False, True])
def test_crop_top_left_is_the_crop_the_pixels_show(make_config, coordinate_images: Path, cache: bool) -> None:
    concept = {"path": coordinate_images, "image": {"flip": 0.5, "crop_jitter": 1.0}, "image_variations": 4}
    config = make_config(concepts=[concept], data={"cache": cache, "bucketing": False}, training={"batch_size": 1})
    encoder = PixelEncoder() if cache else None
    seen: list[tuple[bool, int, int]] = []
    with build_data_loader(config, image_encoder=encoder, quantisation=64) as loader:
        loader.fill_cache()
        for epoch in range(4):
            for batch in loader.batches(epoch):
                seen += _check(batch, batch["latents"] if cache else batch["pixels"])
    assert {flipped for flipped, _, _ in seen} == {False, True}
    assert len({left for _, _, left in seen}) > 2, "crop jitter moves the crop"
    assert len({top for _, top, _ in seen}) > 2


def test_without_jitter_or_flip_the_crop_is_centred(make_config, coordinate_images: Path) -> None:
    concept = {"path": coordinate_images, "image": {"crop_jitter": 0.0}}
    config = make_config(concepts=[concept], data={"bucketing": False}, training={"batch_size": 1})
    with build_data_loader(config, quantisation=64) as loader:
        crops = {
            tuple(batch["original_size"][0].tolist()): tuple(batch["crop_top_left"][0].tolist())
            for batch in loader.batches(0)
        }
    assert crops == {(64, 256): (0, 96), (64, 200): (0, 68), (256, 64): (96, 0), (160, 64): (48, 0)}
