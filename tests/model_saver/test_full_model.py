"""Full models: single-file and diffusers-folder round trips, metadata, and diffusers' own loaders."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from onetrainer.model_loader.stable_diffusion import load_stable_diffusion
from onetrainer.model_saver.stable_diffusion import StableDiffusionSaver
from onetrainer.util.config.loader import load_config
from onetrainer.util.enums import ModelType, TrainingMethod
from onetrainer.util.errors import UserError
from onetrainer.util.registry import ModuleKind, lookup

COMPONENTS = ("unet", "vae", "text_encoder")


def _save(model, path: Path, **options) -> Path:
    return StableDiffusionSaver().save(model, path, method=TrainingMethod.FULL, **options)[0]


def _assert_same(a, b, dtype: torch.dtype | None = None) -> None:
    for component in COMPONENTS:
        sa, sb = getattr(a, component).state_dict(), getattr(b, component).state_dict()
        assert sa.keys() == sb.keys(), component
        for key in sa:
            expected = sa[key] if dtype is None else sa[key].to(dtype).to(sb[key].dtype)
            assert torch.equal(expected, sb[key]), f"{component}.{key}"


def test_saver_is_registered_for_sd15_and_sd2() -> None:
    assert lookup(ModuleKind.SAVER, ModelType.SD15) is StableDiffusionSaver
    assert lookup(ModuleKind.SAVER, ModelType.SD2) is StableDiffusionSaver


@pytest.mark.parametrize("base", ["tiny:sd15", "tiny:sd2-v"])
def test_single_file_round_trip_is_exact(tmp_path: Path, base: str) -> None:
    model = load_stable_diffusion(base)
    path = _save(model, tmp_path / "model.safetensors", dtype=None)
    reloaded = load_stable_diffusion(path, config=base)
    _assert_same(model, reloaded)
    assert reloaded.prediction_type == model.prediction_type


def test_diffusers_folder_round_trip_in_fp16(tmp_path: Path) -> None:
    model = load_stable_diffusion("tiny:sd2-v")
    folder = _save(model, tmp_path / "pipeline", dtype="fp16")
    reloaded = load_stable_diffusion(folder, dtype="fp16")
    _assert_same(model, reloaded, dtype=torch.float16)
    assert reloaded.prediction_type == "v_prediction"
    index = json.loads((folder / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionPipeline"
    assert index["scheduler"] == ["diffusers", "DDPMScheduler"]


def test_single_file_metadata(tmp_path: Path, image_dataset_dir: Path) -> None:
    config = load_config(
        None, ["model.base=tiny:sd2-v", f"data.concepts.0.path={image_dataset_dir}", "data.resolution=64"]
    )
    path = _save(load_stable_diffusion("tiny:sd2-v"), tmp_path / "mine.safetensors", config=config)
    with safe_open(str(path), "pt") as handle:
        metadata, keys = handle.metadata(), set(handle.keys())
    assert metadata["modelspec.architecture"] == "stable-diffusion-v2-768-v"
    assert (metadata["modelspec.prediction_type"], metadata["modelspec.resolution"]) == ("v", "64x64")
    assert metadata["ss_base_model_version"] == "sd_v2_v"
    assert json.loads(metadata["onetrainer_config"])["model"]["base"] == "tiny:sd2-v"
    assert "v_pred" in keys
    assert any(key.startswith("cond_stage_model.model.transformer.resblocks.0.attn.in_proj") for key in keys)


@pytest.mark.parametrize(("base", "fixture"), [("tiny:sd15", "tiny_sd15_dir"), ("tiny:sd2-v", "tiny_sd2_dir")])
def test_diffusers_from_single_file_reads_our_file(
    request: pytest.FixtureRequest, prediction: Callable, tmp_path: Path, base: str, fixture: str
) -> None:
    from diffusers import StableDiffusionPipeline

    config = request.getfixturevalue(fixture)
    model = load_stable_diffusion(base)
    path = _save(model, tmp_path / "model.safetensors", dtype=None)
    pipe = StableDiffusionPipeline.from_single_file(
        str(path), config=str(config), local_files_only=True, safety_checker=None, feature_extractor=None
    )
    _assert_same(model, pipe)  # the weights exactly; the outputs to float32 rounding, since the kernels a CPU
    # picks (and so the last bits) depend on the tensors' memory alignment, which differs between loaders
    assert pipe.scheduler.config.prediction_type == model.prediction_type
    torch.testing.assert_close(
        prediction(pipe.unet, pipe.text_encoder, pipe.tokenizer),
        prediction(model.unet, model.text_encoder, model.tokenizer),
        rtol=1e-5,
        atol=1e-5,
    )


def test_existing_output_is_refused_unless_overwriting(tmp_path: Path) -> None:
    model = load_stable_diffusion("tiny:sd15")
    path = _save(model, tmp_path / "model.safetensors")
    with pytest.raises(UserError, match="already exists"):
        _save(model, path)
    assert _save(model, path, overwrite=True) == path


def test_a_model_with_lora_layers_is_not_saved_as_a_base_model(tmp_path: Path) -> None:
    from onetrainer.model.adapters.lora import inject_lora

    model = load_stable_diffusion("tiny:sd15")
    inject_lora(model, kind="lora", rank=2, alpha=2, components=("unet",))
    with pytest.raises(UserError, match="LoRA layers injected"):
        _save(model, tmp_path / "model.safetensors")
    assert not (tmp_path / "model.safetensors").exists()
