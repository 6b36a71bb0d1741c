"""One hub model that is not on this machine gets one message, whichever command looked for it.

`train` used to omit where it was named, `sample` leaked `LocalEntryNotFoundError` and suggested
`--model-type`, and `caption`/`mask` worded it a third way.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from onetrainer.commands.app import app

runner = CliRunner()
UNCACHED = "onetrainer-test/no-such-model"
DEMO = Path(__file__).resolve().parents[2] / "presets" / "demo.yaml"


def _said(arguments: list[str]) -> tuple[int, str]:
    result = runner.invoke(app, arguments, terminal_width=100)
    return result.exit_code, " ".join(result.output.replace("│", " ").split())


@pytest.fixture
def images(shapes_dataset_dir: Path, tmp_path: Path) -> Path:
    folder = tmp_path / "shapes"
    shutil.copytree(shapes_dataset_dir, folder)
    return folder


def test_train_sample_caption_and_mask_say_the_same(images: Path, tmp_path: Path) -> None:
    commands = {
        "model.base": [
            "train", str(DEMO), f"model.base={UNCACHED}", f"data.concepts.0.path={images}",
            f"workspace={tmp_path / 'ws'}", f"saving.output={tmp_path / 'out.safetensors'}",
        ],
        "the MODEL argument": ["sample", UNCACHED, "-p", "x", "-o", str(tmp_path / "samples")],
        "--model": ["caption", str(images), "--model", UNCACHED, "--mode", "replace"],
    }  # fmt: skip
    commands_mask = ["mask", str(images), "--model", UNCACHED, "-p", "a cat", "--mode", "replace"]
    said = {where: _said(arguments) for where, arguments in commands.items()}
    said["--model (mask)"] = _said(commands_mask)
    for where, (code, text) in said.items():
        assert code == 2, text
        assert "Model not available" in text, where
        assert (
            f"'{UNCACHED}' is not on this machine: it is not a local file or folder, it is not in the Hugging" in text
        )
        assert f"where: {where.removesuffix(' (mask)')}" in text
        assert f"`hf download {UNCACHED}`" in text
        assert "pass a local path instead" in text
        for leak in ("LocalEntryNotFoundError", "--model-type", "Traceback", "couldn't connect"):
            assert leak not in text, (where, leak)
