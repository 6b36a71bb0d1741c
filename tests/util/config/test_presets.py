import pytest
import yaml

from onetrainer.util.config.loader import load_config
from onetrainer.util.config.presets import load_preset, preset_description, preset_names, presets_dir
from onetrainer.util.registry import ModuleKind, supporting

REQUIRED = {"sd15-lora", "sd15-full", "sd15-embedding"}
TRAINS = (ModuleKind.LOADER, ModuleKind.SETUP, ModuleKind.SAMPLER, ModuleKind.SAVER)
"""What a family needs before `train` can run it (previews need the sampler)."""


def test_required_presets_are_shipped():
    assert set(preset_names()) >= REQUIRED


@pytest.mark.parametrize("name", preset_names())
def test_no_preset_of_a_family_that_cannot_train_is_shipped(name):
    model_type = load_preset(name).get("model", {}).get("type")
    assert model_type in supporting(TRAINS), f"{name}: model type {model_type!r} has no training modules"


@pytest.mark.parametrize("name", preset_names())
def test_every_preset_validates_as_shipped(name, monkeypatch):
    monkeypatch.chdir(presets_dir().parent)  # the demo's example dataset is relative to the repository root
    config = load_config(presets_dir() / f"{name}.yaml")
    assert config.model.base
    description = preset_description(name)
    assert description.endswith("."), f"{name}: a preset starts with a comment sentence that describes it"
    assert "#" not in description


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


@pytest.mark.parametrize("name", ["sd35-large-lora", "sd35-large-full", "sd35-medium-lora", "sd35-medium-full"])
def test_sd35_presets_follow_sd3s_recipe(name, tmp_path):
    """1024 px in buckets of 16 px, noise levels logit-normal and shifted by 3, as the SD 3 paper trains."""
    from onetrainer.util.family import get_family

    config = load_config(presets_dir() / f"{name}.yaml", [f"data.concepts.0.path={tmp_path}"])
    assert config.model.type == name.rsplit("-", 1)[0]
    assert (config.method.value, config.data.resolution) == (name.rsplit("-", 1)[1], 1024)
    assert get_family(config.model.type).bucket_step == 16
    assert config.noise.shift == 3.0
    assert config.noise.timesteps.distribution.value == "logit-normal"
    assert config.model.base.startswith("stabilityai/stable-diffusion-3.5-")


def test_a_description_that_wraps_onto_a_second_comment_line_is_read_whole() -> None:
    assert preset_description("flux-dev-full") == (
        "FLUX.1-dev full fine-tune of the transformer at 1024 px (Adafactor 1e-6): needs a 141 GB GPU (H200), "
        "since the 12 B trained weights and their gradients are kept in fp32."
    )
    assert preset_description("demo").endswith("about 20 s on two CPU cores.")  # its first sentence only
