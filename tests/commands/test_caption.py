"""`onetrainer caption` through the CLI: files, options, summary and exit codes."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from onetrainer.commands.app import app
from onetrainer.dataset_tools.tiny import save_tiny_blip
from onetrainer.util.tiny.dataset import UNREADABLE_ODD_FILES, make_image_dataset, write_png_claiming_size

runner = CliRunner()


@pytest.fixture(scope="module")
def blip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_blip(tmp_path_factory.mktemp("captioners") / "blip")


def test_caption_writes_files_and_prints_a_summary(blip_dir: Path, tmp_path: Path) -> None:
    folder = make_image_dataset(tmp_path / "images", count=2, with_captions=False, odd_images=True)

    result = runner.invoke(
        app,
        ["caption", str(folder), "--model", str(blip_dir), "--batch-size", "3", "--max-new-tokens", "6",
         "--prefix", "sks, ", "--device", "cpu", "--dtype", "fp32"],
    )  # fmt: skip

    assert result.exit_code == 0, result.output
    captions = sorted(folder.glob("*.txt"))
    assert len(captions) == 2 + 10 - len(UNREADABLE_ODD_FILES)
    assert all(path.read_text().startswith("sks, ") for path in captions)
    assert re.search(r"captions written\s+10\b", result.stdout)
    for name in UNREADABLE_ODD_FILES:
        assert name in result.stdout


def test_caption_fill_is_the_default_and_keeps_existing_captions(blip_dir: Path, tmp_path: Path) -> None:
    folder = make_image_dataset(tmp_path / "images", count=2, with_captions=True, with_masks=False)
    before = {path.name: path.read_text() for path in folder.glob("*.txt")}

    result = runner.invoke(app, ["caption", str(folder), "--model", str(blip_dir)])

    assert result.exit_code == 0, result.output
    assert {path.name: path.read_text() for path in folder.glob("*.txt")} == before


def test_caption_recursive(blip_dir: Path, tmp_path: Path) -> None:
    Image.new("RGB", (16, 16), (1, 2, 3)).save(tmp_path / "top.png")
    (tmp_path / "sub").mkdir()
    Image.new("RGB", (16, 16), (4, 5, 6)).save(tmp_path / "sub" / "deep.png")
    arguments = ["caption", str(tmp_path), "--model", str(blip_dir), "--max-new-tokens", "4"]

    assert runner.invoke(app, arguments).exit_code == 0
    assert not (tmp_path / "sub" / "deep.txt").exists()
    assert runner.invoke(app, [*arguments, "--recursive"]).exit_code == 0
    assert (tmp_path / "sub" / "deep.txt").read_text().strip()


def test_caption_tagger_options(tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    from onetrainer.dataset_tools.tiny import save_tiny_tagger

    tagger = save_tiny_tagger(tmp_path / "tagger")
    folder = tmp_path / "images"
    folder.mkdir()
    Image.new("RGB", (16, 16), (255, 255, 0)).save(folder / "a.png")

    result = runner.invoke(
        app,
        ["caption", str(folder), "--model", str(tagger), "--exclude", "red_hair,other", "--general-threshold", "0.4"],
    )

    assert result.exit_code == 0, result.output
    assert (folder / "a.txt").read_text() == "hatsune miku, ^_^\n"


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["caption", "{missing}"], "folder not found"),
        (["caption", "{folder}", "--model", "{missing}"], "model not found"),
        (["caption", "{folder}", "--device", "tpu9"], "unknown device"),
        (["caption", "{folder}", "--dtype", "float32", "--model", "{blip}"], "'fp32', 'fp16', 'bf16'"),
        (["caption", "{folder}", "--mode", "merge"], "merge"),
        (["caption", "{folder}", "--batch-size", "0"], "batch-size"),
    ],
)
def test_caption_user_errors_exit_2(blip_dir: Path, tmp_path: Path, arguments: list[str], message: str) -> None:
    folder = make_image_dataset(tmp_path / "images", count=1, with_captions=False, with_masks=False)
    values = {"missing": str(tmp_path / "missing"), "folder": str(folder), "blip": str(blip_dir)}

    result = runner.invoke(app, [argument.format(**values) for argument in arguments])

    assert result.exit_code == 2
    assert message in result.output


@pytest.mark.parametrize("builder", ["save_tiny_blip2", "save_tiny_florence2"])
def test_caption_with_blip2_and_florence2_folders(builder: str, tmp_path: Path) -> None:
    from onetrainer.dataset_tools import tiny

    model = getattr(tiny, builder)(tmp_path / "model")
    folder = make_image_dataset(tmp_path / "images", count=3, with_captions=False, with_masks=False)
    arguments = ["caption", str(folder), "--model", str(model), "--max-new-tokens", "6", "--device", "cpu"]

    first = runner.invoke(app, [*arguments, "--prefix", "sks, "])
    written = {path.name: path.read_text() for path in folder.glob("*.txt")}
    again = runner.invoke(app, [*arguments, "--mode", "replace", "--batch-size", "1"])

    assert first.exit_code == 0, first.output
    assert again.exit_code == 0, again.output
    assert re.search(r"captions written\s+3\b", first.stdout)
    assert sorted(written) == ["img-000.txt", "img-001.txt", "img-002.txt"]
    assert all(text.startswith("sks, ") and len(text.strip()) > len("sks,") for text in written.values())
    assert {path.name: f"sks, {path.read_text()}" for path in folder.glob("*.txt")} == written


def test_caption_florence2_rejects_a_task_token_with_extra_text(tmp_path: Path) -> None:
    from onetrainer.dataset_tools.tiny import save_tiny_florence2

    model = save_tiny_florence2(tmp_path / "florence2")
    folder = make_image_dataset(tmp_path / "images", count=1, with_captions=False, with_masks=False)

    result = runner.invoke(app, ["caption", str(folder), "--model", str(model), "--prompt", "<OD> cats"])

    assert result.exit_code == 2
    assert "does not accept the prompt" in result.output
    assert not list(folder.glob("*.txt"))


@pytest.mark.parametrize(
    ("model", "message", "hint"),
    [
        ("{missing}", "model not found", "{missing}"),
        ("blipp", "unknown captioning model 'blipp'; did you mean 'blip'?", "blip, blip2, florence2, wd14"),
        ("wd14:{missing}", "model not found", "{missing}"),
    ],
)
def test_the_model_is_checked_even_when_no_image_needs_a_caption(
    tmp_path: Path, model: str, message: str, hint: str
) -> None:
    """A wrong --model used to pass (exit 0) on a folder where nothing needed captioning."""
    empty = tmp_path / "empty"
    empty.mkdir()
    missing = str(tmp_path / "no-such-model")

    result = runner.invoke(app, ["caption", str(empty), "--model", model.format(missing=missing)])

    said = " ".join(result.output.replace("│", " ").split())
    assert result.exit_code == 2, result.output
    assert message in said
    assert "where: --model" in said
    assert hint.format(missing=missing) in said


def test_a_bad_device_is_refused_before_the_folder_is_read(tmp_path: Path) -> None:
    result = runner.invoke(app, ["caption", str(tmp_path / "not-there"), "--device", "tpu"])

    assert result.exit_code == 2
    assert "unknown device 'tpu'" in result.output


def test_a_giant_image_is_skipped_saying_what_the_limit_is(blip_dir: Path, tmp_path: Path) -> None:
    """The reason told the user to raise a run config's data.max_image_pixels, which caption has not."""
    Image.new("RGB", (16, 16), (1, 2, 3)).save(tmp_path / "small.png")
    write_png_claiming_size(tmp_path / "giant.png", 15000, 15000)

    result = runner.invoke(
        app, ["caption", str(tmp_path), "--model", str(blip_dir), "--max-new-tokens", "4"], terminal_width=200
    )

    said = " ".join(result.stdout.split())
    assert result.exit_code == 0, result.output
    assert "giant.png: too large: 225,000,000 pixels, above the limit of 178,956,970 (Pillow's guard" in said
    assert "downscale the image" in said
    assert "max_image_pixels" not in said
