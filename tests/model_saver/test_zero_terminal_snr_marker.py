"""ComfyUI's `ztsnr` marker: a zero-terminal-SNR model keeps its schedule through every file it is saved as.

ComfyUI samples an SDXL checkpoint on the zero-terminal-SNR schedule only when the file carries empty
`v_pred` and `ztsnr` tensors (`supported_models.SDXL.model_type`); v-prediction anime fine-tunes ship
that way. Without the marker a model trained to zero terminal SNR loads there on the ordinary schedule.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from onetrainer.commands.app import app
from onetrainer.model_loader.pipeline import load_model
from onetrainer.model_sampler.schedulers import build_scheduler
from onetrainer.model_saver.diffusion import DiffusionSaver
from onetrainer.model_setup.ddpm import zero_terminal_snr_scheduler
from onetrainer.util.enums import TrainingMethod


def _zero_snr_model(base: str):
    model = load_model(base, prediction_type="v_prediction")
    model.noise_scheduler = zero_terminal_snr_scheduler(model.noise_scheduler)
    return model


def _keys(path: Path) -> set[str]:
    with safe_open(str(path), "pt") as handle:
        return set(handle.keys())


def _assert_zero_snr(scheduler) -> None:
    assert scheduler.config.rescale_betas_zero_snr is True
    assert scheduler.config.timestep_spacing == "trailing"
    assert float(scheduler.alphas_cumprod[-1]) < 1e-6  # the last timestep is pure noise


@pytest.mark.parametrize("base", ["tiny:sd2", "tiny:sdxl"])
def test_a_zero_snr_model_saves_the_marker_and_loads_back_on_its_schedule(tmp_path: Path, base: str) -> None:
    model = _zero_snr_model(base)
    path = DiffusionSaver().save(model, tmp_path / "model.safetensors", method=TrainingMethod.FULL, dtype=None)[0]
    assert {"v_pred", "ztsnr"} <= _keys(path)
    assert load_file(str(path))["ztsnr"].numel() == 0

    reloaded = load_model(path, config=base)
    assert reloaded.prediction_type == "v_prediction"
    _assert_zero_snr(reloaded.noise_scheduler)
    torch.testing.assert_close(reloaded.noise_scheduler.alphas_cumprod, model.noise_scheduler.alphas_cumprod)
    _assert_zero_snr(build_scheduler("dpm++2m", reloaded.noise_scheduler.config))  # previews and `sample`


@pytest.mark.parametrize("base", ["tiny:sd2", "tiny:sdxl"])
def test_an_ordinary_model_carries_no_marker_and_loads_on_the_ordinary_schedule(tmp_path: Path, base: str) -> None:
    model = load_model(base, prediction_type="v_prediction")
    path = DiffusionSaver().save(model, tmp_path / "model.safetensors", method=TrainingMethod.FULL, dtype=None)[0]
    assert "ztsnr" not in _keys(path)
    reloaded = load_model(path, config=base)
    assert not reloaded.noise_scheduler.config.get("rescale_betas_zero_snr")
    assert float(reloaded.noise_scheduler.alphas_cumprod[-1]) > 1e-4


def test_convert_keeps_the_schedule_between_single_files_and_diffusers_folders(tmp_path: Path) -> None:
    source = DiffusionSaver().save(
        _zero_snr_model("tiny:sdxl"), tmp_path / "zsnr.safetensors", method=TrainingMethod.FULL, dtype=None
    )[0]
    runner = CliRunner()

    folder = tmp_path / "folder"
    result = runner.invoke(app, ["convert", str(source), str(folder), "--to", "diffusers", "--config", "tiny:sdxl"])
    assert result.exit_code == 0, result.output
    scheduler = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
    assert (scheduler["rescale_betas_zero_snr"], scheduler["timestep_spacing"]) == (True, "trailing")
    assert scheduler["prediction_type"] == "v_prediction"

    back = tmp_path / "back.safetensors"
    assert runner.invoke(app, ["convert", str(folder), str(back)]).exit_code == 0
    assert {"v_pred", "ztsnr"} <= _keys(back)

    cast = tmp_path / "fp16.safetensors"
    assert runner.invoke(app, ["convert", str(source), str(cast), "--dtype", "fp16"]).exit_code == 0
    assert {"v_pred", "ztsnr"} <= _keys(cast)

    unmarked = tmp_path / "unmarked.safetensors"
    save_file({k: t for k, t in load_file(str(source)).items() if k != "ztsnr"}, str(unmarked))
    plain = tmp_path / "plain"
    result = runner.invoke(app, ["convert", str(unmarked), str(plain), "--to", "diffusers", "--config", "tiny:sdxl"])
    assert result.exit_code == 0, result.output
    assert not json.loads((plain / "scheduler" / "scheduler_config.json").read_text()).get("rescale_betas_zero_snr")

    named = tmp_path / "named.safetensors"  # the schedule of the architecture `--config` names, single file to single
    assert runner.invoke(app, ["convert", str(unmarked), str(named), "--config", str(folder)]).exit_code == 0
    assert {"v_pred", "ztsnr"} <= _keys(named)
    ordinary = tmp_path / "ordinary.safetensors"
    assert runner.invoke(app, ["convert", str(unmarked), str(ordinary), "--config", "tiny:sdxl"]).exit_code == 0
    assert "ztsnr" not in _keys(ordinary)


@pytest.mark.parametrize("zero_snr", [True, False])
def test_a_zero_snr_folder_names_a_scheduler_class_that_can_rescale(tmp_path: Path, zero_snr: bool) -> None:
    """SD 1.5's released scheduler class is PNDM, which has no `rescale_betas_zero_snr`: diffusers would keep the
    setting in the config and sample on the ordinary schedule."""
    from diffusers import DDIMScheduler, DiffusionPipeline

    model = _zero_snr_model("tiny:sd15") if zero_snr else load_model("tiny:sd15")
    model.scheduler_class = "PNDMScheduler"
    folder = DiffusionSaver().save(model, tmp_path / "folder", method=TrainingMethod.FULL, dtype=None)[0]
    scheduler = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
    expected = "DDIMScheduler" if zero_snr else "PNDMScheduler"
    assert scheduler["_class_name"] == expected
    assert json.loads((folder / "model_index.json").read_text())["scheduler"] == ["diffusers", expected]
    if zero_snr:
        pipe = DiffusionPipeline.from_pretrained(str(folder), local_files_only=True)
        assert isinstance(pipe.scheduler, DDIMScheduler)
        assert float(pipe.scheduler.alphas_cumprod[-1]) < 1e-6
