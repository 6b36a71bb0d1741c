import yaml
from typer.testing import CliRunner

from onetrainer.commands.app import app
from onetrainer.util.config.presets import preset_names

runner = CliRunner()


def test_lists_every_preset_with_its_description():
    result = runner.invoke(app, ["presets"], terminal_width=200)
    assert result.exit_code == 0
    for name in preset_names():
        assert name in result.output
    assert "Stable Diffusion 1.5 LoRA at 512 px" in result.output


def test_prints_one_preset_as_yaml():
    result = runner.invoke(app, ["presets", "sd15-lora"])
    assert result.exit_code == 0
    data = yaml.safe_load(result.output)
    assert data["model"]["type"] == "sd15"
    assert data["method"] == "lora"


def test_unknown_preset_exits_2_with_the_valid_names():
    result = runner.invoke(app, ["presets", "sd15-lroa"], terminal_width=200)
    assert result.exit_code == 2
    assert "did you mean 'sd15-lora'" in result.output
    assert "sd15-full" in result.output
    assert "Traceback" not in result.output


def test_an_unknown_preset_is_not_called_an_invalid_config():
    result = runner.invoke(app, ["presets", "nope"], terminal_width=200)
    assert result.exit_code == 2
    assert "Unknown preset" in result.output
    assert "Invalid config" not in result.output
    assert "no preset is named 'nope'" in result.output
    for name in preset_names():
        assert name in result.output
