import pytest
import yaml

from onetrainer.util.config.loader import load_config
from onetrainer.util.config.presets import load_preset, preset_description, preset_names, presets_dir

REQUIRED = {"sd15-lora", "sd15-full", "sd15-embedding", "sdxl-lora", "sdxl-full", "sdxl-embedding"}


def test_required_presets_are_shipped():
    assert set(preset_names()) >= REQUIRED


@pytest.mark.parametrize("name", preset_names())
def test_every_preset_validates_as_shipped(name, monkeypatch):
    monkeypatch.chdir(presets_dir().parent)  # the demo's example dataset is relative to the repository root
    config = load_config(presets_dir() / f"{name}.yaml")
    assert config.model.base
    assert preset_description(name), "a preset starts with a one-line description comment"


@pytest.mark.parametrize("name", preset_names())
def test_every_preset_takes_a_dataset_from_the_command_line(name, tmp_path):
    config = load_config(presets_dir() / f"{name}.yaml", [f"data.concepts.0.path={tmp_path}"])
    assert config.data.concepts[0].path == tmp_path


@pytest.mark.parametrize("name", preset_names())
def test_preset_used_by_name_equals_preset_file(name, tmp_path):
    run = tmp_path / "run.yaml"
    run.write_text(yaml.safe_dump({"preset": name}))
    overrides = [f"data.concepts.0.path={tmp_path}"] if load_preset(name).get("data", {}).get("concepts") else []
    by_name = load_config(run, overrides)
    by_file = load_config(presets_dir() / f"{name}.yaml", overrides)
    assert by_name.model_dump(exclude={"preset"}) == by_file.model_dump(exclude={"preset"})
