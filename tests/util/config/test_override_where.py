"""A config error names where the bad value came from: the file, or the command-line override."""

from __future__ import annotations

from pathlib import Path

import pytest

from onetrainer.util.config.loader import load_config
from onetrainer.util.errors import ConfigError


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    images = tmp_path / "images"
    images.mkdir()
    path = tmp_path / "my-lora.yaml"
    path.write_text(f"model:\n  base: org/model\ndata:\n  concepts:\n    - path: {images}\n", encoding="utf-8")
    return path


@pytest.mark.parametrize(
    "override",
    ["training.learning_rate=abc", "output.output=x.safetensors", "training.lerning_rate=1e-4", "training..x=1", "=5"],
)
def test_a_bad_override_is_located_on_the_command_line(config_file: Path, override: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(config_file, ["training.epochs=3", override])
    assert caught.value.where == f"command line: {override}"


def test_problems_in_the_file_and_an_override_name_both(config_file: Path) -> None:
    config_file.write_text(config_file.read_text(encoding="utf-8") + "training:\n  batch_size: 0\n", encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_config(config_file, ["training.learning_rate=abc"])
    assert caught.value.where == f"{config_file}, command line: training.learning_rate=abc"


def test_a_problem_in_the_file_is_located_in_the_file(config_file: Path) -> None:
    config_file.write_text(config_file.read_text(encoding="utf-8") + "training:\n  batch_size: 0\n", encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_config(config_file, ["training.epochs=3"])
    assert caught.value.where == str(config_file)
