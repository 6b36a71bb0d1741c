"""`onetrainer train CONFIG --check`: validate, print the resolved config, exit 0 or 2."""

import pytest
import yaml
from typer.testing import CliRunner

from onetrainer.commands.app import app
from onetrainer.util.config.presets import presets_dir

runner = CliRunner()


def check(*args):
    return runner.invoke(app, ["train", *map(str, args), "--check"], terminal_width=200)


def test_preset_file_with_concept_override_prints_resolved_config(tmp_path):
    result = check(presets_dir() / "sd15-lora.yaml", f"data.concepts.0.path={tmp_path}", "training.epochs=3")
    assert result.exit_code == 0, result.output
    resolved = yaml.safe_load(result.output)
    assert resolved["data"]["concepts"][0]["path"] == str(tmp_path)
    assert resolved["training"]["epochs"] == 3
    assert resolved["model"]["type"] == "sd15"


@pytest.mark.parametrize(
    ("content", "overrides", "expected"),
    [
        ("model: [oops\n", [], "invalid YAML"),
        ("training:\n  learning_rte: 1\n", [], "did you mean 'training.learning_rate'"),
        ("training:\n  batch_size: many\n", [], "valid integer"),
        ("training:\n  batch_size: 0\n", [], "greater than or equal to 1"),
        ("preset: sd15-lroa\n", [], "did you mean 'sd15-lora'"),
        ("", ["foo"], "KEY=VALUE"),
        ("", ["training.nope=1"], "unknown key"),
        ("", ["data.concepts.9.path=/tmp"], "out of range"),
    ],
)
def test_bad_input_exits_2_with_a_clear_message(tmp_path, content, overrides, expected):
    concepts = tmp_path / "images"
    concepts.mkdir()
    config = tmp_path / "run.yaml"
    config.write_text(content)
    base = [] if content.startswith("preset") else ["model.base=org/model", f"data.concepts.0.path={concepts}"]
    if "[oops" in content:
        base = []
    result = check(config, *base, *overrides)
    assert result.exit_code == 2, result.output
    assert expected in result.output
    assert "Traceback" not in result.output


def test_missing_config_file_exits_2(tmp_path):
    result = check(tmp_path / "missing.yaml")
    assert result.exit_code == 2
    assert "config file not found" in result.output


def test_missing_concept_folder_names_the_key(tmp_path):
    result = check(presets_dir() / "sd15-lora.yaml")
    assert result.exit_code == 2
    assert "data.concepts.0.path" in result.output
    assert "does not exist" in result.output
