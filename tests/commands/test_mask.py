"""`onetrainer mask` through the CLI: files, options, summary and exit codes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from onetrainer.commands.app import app
from onetrainer.dataset_tools.tiny import save_tiny_clipseg
from onetrainer.util.tiny.dataset import make_image_dataset

runner = CliRunner()


def _two_colours(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    pixels = np.zeros((6, 6, 3), dtype=np.uint8)
    pixels[:, :3] = (255, 0, 0)
    pixels[:, 3:] = (0, 255, 0)
    Image.fromarray(pixels).save(folder / "a.png")
    return folder


def _mask(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("L"))


def test_color_mask_with_expand(tmp_path: Path) -> None:
    folder = _two_colours(tmp_path / "images")

    result = runner.invoke(
        app,
        ["mask", str(folder), "--model", "color", "-p", "red", "--threshold", "0", "--smooth", "0", "--expand", "1"],
    )

    assert result.exit_code == 0, result.output
    expected = np.zeros((6, 6), dtype=np.uint8)
    expected[:, :4] = 255
    np.testing.assert_array_equal(_mask(folder / "a-masklabel.png"), expected)
    assert "masks written" in result.stdout


def test_mask_subtract_with_alpha(tmp_path: Path) -> None:
    folder = _two_colours(tmp_path / "images")
    Image.new("L", (6, 6), 255).save(folder / "a-masklabel.png")

    result = runner.invoke(
        app,
        ["mask", str(folder), "--model", "color", "-p", "#00ff00", "--smooth", "0", "--expand", "0",
         "--mode", "subtract", "--alpha", "0.5"],
    )  # fmt: skip

    assert result.exit_code == 0, result.output
    expected = np.full((6, 6), 255, dtype=np.uint8)
    expected[:, 3:] = 128
    np.testing.assert_array_equal(_mask(folder / "a-masklabel.png"), expected)


def test_clipseg_mask_recursive(tmp_path: Path) -> None:
    model = save_tiny_clipseg(tmp_path / "clipseg")
    folder = make_image_dataset(tmp_path / "images" / "nested", count=2, with_captions=False, with_masks=False)

    result = runner.invoke(app, ["mask", str(tmp_path / "images"), "-r", "-m", str(model), "-p", "a cat"])

    assert result.exit_code == 0, result.output
    assert sorted(path.name for path in folder.glob("*-masklabel.png")) == [
        "img-000-masklabel.png",
        "img-001-masklabel.png",
    ]


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["mask", "{folder}"], "--prompt"),
        (["mask", "{folder}", "-p", "x", "--model", "color"], "not a colour"),
        (["mask", "{folder}", "-p", "red", "--model", "color", "--alpha", "2"], "alpha"),
        (["mask", "{folder}", "-p", "red", "--mode", "xor"], "xor"),
        (["mask", "{missing}", "-p", "red"], "folder not found"),
    ],
)
def test_mask_user_errors_exit_2(tmp_path: Path, arguments: list[str], message: str) -> None:
    folder = _two_colours(tmp_path / "images")
    values = {"missing": str(tmp_path / "missing"), "folder": str(folder)}

    result = runner.invoke(app, [argument.format(**values) for argument in arguments])

    assert result.exit_code == 2
    assert message in result.output
