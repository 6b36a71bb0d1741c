"""`onetrainer mask` through the CLI: files, options, summary and exit codes."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from onetrainer.commands.app import app
from onetrainer.dataset_tools.tiny import save_tiny_blip, save_tiny_clipseg
from onetrainer.util.tiny.dataset import make_image_dataset, write_png_claiming_size

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


def test_a_model_that_is_not_clipseg_is_refused_by_name(tmp_path: Path) -> None:
    """A BLIP folder ended in transformers' "You set `ignore_mismatched_sizes` to `False`" (exit 1)."""
    model = save_tiny_blip(tmp_path / "blip")
    folder = _two_colours(tmp_path / "images")

    result = runner.invoke(app, ["mask", str(folder), "-m", str(model), "-p", "a cat"])

    text = "".join(result.output.replace("│", " ").split())  # the panel folds the long path anywhere
    assert result.exit_code == 2, result.output
    assert f"{model}isnotaCLIPSegmodel" in text
    assert "where:--model" in text
    assert "itisablipmodel" in text
    assert not (folder / "a-masklabel.png").exists()


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["mask", "{folder}"], "--prompt"),
        (["mask", "{folder}", "-p", "x", "--model", "color"], "not a colour"),
        (["mask", "{folder}", "-p", "red", "--model", "color", "--alpha", "2"], "alpha"),
        (["mask", "{folder}", "-p", "red", "--model", "color", "--alpha", "nan"], "'--alpha': nan is not a number"),
        (["mask", "{folder}", "-p", "red", "--model", "color", "--threshold", "nan"], "nan is not a number"),
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


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--model", "color", "-p", "not-a-colour"], "not a colour: 'not-a-colour'"),
        (["--model", "colour", "-p", "red"], "unknown mask model 'colour'; did you mean 'color'?"),
        (["--model", "./no-such-clipseg", "-p", "a cat"], "model not found: ./no-such-clipseg"),
        (["-p", "a cat", "--dtype", "float16"], "'fp32', 'fp16', 'bf16'"),
    ],
)
def test_arguments_are_checked_even_when_no_image_needs_a_mask(
    tmp_path: Path, arguments: list[str], message: str
) -> None:
    """A bad --prompt or --model used to exit 0 on a folder with nothing to mask."""
    empty = tmp_path / "empty"
    empty.mkdir()

    result = runner.invoke(app, ["mask", str(empty), *arguments])

    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.replace("│", " ").split())


def test_the_example_red_is_masked_by_the_default_colour_threshold(shapes_dataset_dir: Path, tmp_path: Path) -> None:
    """The shapes' red is 220,30,30: at the old default (0.1) `#ff0000` masked none of it, silently."""
    folder = tmp_path / "shapes"
    shutil.copytree(shapes_dataset_dir, folder)
    red = {path.with_suffix(".png").name for path in folder.glob("*.txt") if " red " in path.read_text()}
    assert red

    result = runner.invoke(app, ["mask", str(folder), "--model", "color", "-p", "#ff0000"])

    assert result.exit_code == 0, result.output
    masked = {
        image.name
        for image in folder.glob("*.png")
        if "-masklabel" not in image.name and _mask(image.with_name(image.stem + "-masklabel.png")).max() == 255
    }
    assert masked == red
    empty = 16 - len(red)
    assert re.search(rf"empty \(nothing matched\)\s+{empty}\b", result.stdout)
    assert f"{empty} of 16 masks are empty" in " ".join(result.stderr.split())


def test_masks_where_nothing_matched_are_counted_and_named(tmp_path: Path) -> None:
    folder = _two_colours(tmp_path / "images")
    Image.new("RGB", (6, 6), (0, 0, 255)).save(folder / "b.png")

    result = runner.invoke(app, ["mask", str(folder), "--model", "color", "-p", "yellow", "--threshold", "0.05"])

    warning = " ".join(result.stderr.split())
    assert result.exit_code == 0, result.output
    assert "2 of 2 masks are empty" in warning
    assert "a-masklabel.png, b-masklabel.png" in warning
    assert "raise --threshold" in warning


def test_a_giant_image_is_skipped_saying_what_the_limit_is(tmp_path: Path) -> None:
    """The reason told the user to raise a run config's data.max_image_pixels, which mask has not."""
    folder = _two_colours(tmp_path / "images")
    write_png_claiming_size(folder / "giant.png", 15000, 15000)

    result = runner.invoke(app, ["mask", str(folder), "--model", "color", "-p", "red"], terminal_width=200)

    said = " ".join(result.stdout.split())
    assert result.exit_code == 0, result.output
    assert "giant.png: too large: 225,000,000 pixels, above the limit of 178,956,970 (Pillow's guard" in said
    assert "max_image_pixels" not in said


def test_images_sharing_a_name_are_skipped_and_counted_as_such(tmp_path: Path) -> None:
    """`red.png` and `red.jpg` would both write `red-masklabel.png`: the second overwrote the first while the
    summary counted two masks written."""
    folder = _two_colours(tmp_path / "images")
    Image.new("RGB", (6, 6), (255, 0, 0)).save(folder / "red.png")
    Image.new("RGB", (6, 6), (255, 0, 0)).save(folder / "red.jpg")

    result = runner.invoke(app, ["mask", str(folder), "--model", "color", "-p", "red"], terminal_width=200)

    said = " ".join(result.stdout.split())
    assert result.exit_code == 0, result.output
    assert re.search(r"masks written\s+1\b", result.stdout)
    assert re.search(r"skipped\s+2\b", result.stdout)
    assert "red.jpg: red.png would write the same red-masklabel.png, so none of them is handled" in said
    assert "red.png: red.jpg would write the same red-masklabel.png" in said
    assert not (folder / "red-masklabel.png").exists()
