"""diffusers' own loaders read our files and draw the same images as our sampler, seed for seed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from onetrainer.model.adapters import add_embedding, inject_lora, merge_lora, read_embedding_file, read_lora_file
from onetrainer.model.adapters.lora import LoraTargets
from onetrainer.model.diffusion import DiffusionModel
from onetrainer.model_loader.pipeline import load_model
from onetrainer.model_sampler.stable_diffusion import StableDiffusionSampler
from onetrainer.model_saver.diffusion import DiffusionSaver
from onetrainer.util.enums import TrainingMethod

PROMPT = "a photo of a red circle"
STEPS = 4


def _pipeline(folder: Path):
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(folder, local_files_only=True, safety_checker=None)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _diffusers(pipe, prompt: str = PROMPT) -> np.ndarray:
    image = pipe(prompt, num_inference_steps=STEPS, guidance_scale=7.5, generator=torch.Generator().manual_seed(5))
    return np.asarray(image.images[0]).astype(int)


def _ours(model: DiffusionModel, prompt: str = PROMPT) -> np.ndarray:
    image = StableDiffusionSampler(model).sample(prompt, steps=STEPS, cfg=7.5, seed=5, scheduler="ddpm")[0]
    return np.asarray(image).astype(int)


def _trained_lora(folder: Path) -> DiffusionModel:
    model = load_model(folder)
    targets = {
        name: LoraTargets("full", presets=model.spec.component(name).lora_presets) for name in ("unet", "text_encoder")
    }
    adapter = inject_lora(model, kind="lora", rank=2, alpha=1.0, targets=targets)
    gen = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for component in adapter.components:
            for param in adapter.parameters(model, component):
                param.copy_(torch.randn(param.shape, generator=gen) * 0.3)
    model.adapters.lora = adapter
    return model


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["kohya", "peft"])
def test_load_lora_weights_draws_what_our_sampler_draws(layout: str, tiny_sd15_dir: Path, tmp_path: Path) -> None:
    trained = _trained_lora(tiny_sd15_dir)
    path = tmp_path / f"{layout}.safetensors"
    DiffusionSaver().save(trained, path, method=TrainingMethod.LORA, format=layout, dtype="fp32")

    pipe = _pipeline(tiny_sd15_dir)
    base = _diffusers(pipe)
    pipe.load_lora_weights(str(path.parent), weight_name=path.name)
    theirs = _diffusers(pipe)
    merged = load_model(tiny_sd15_dir)
    merge_lora(merged, read_lora_file(path, merged.spec))
    ours = _ours(merged)

    assert np.abs(theirs - base).mean() > 2  # the LoRA visibly changes the image
    assert np.abs(ours - theirs).max() <= 1  # merged vs. unmerged weights: float rounding only
    assert np.array_equal(_ours(trained), ours) or np.abs(_ours(trained) - ours).max() <= 1


def test_load_textual_inversion_draws_what_our_sampler_draws(tiny_sd15_dir: Path, tmp_path: Path) -> None:
    model = load_model(tiny_sd15_dir)
    vectors = torch.randn(2, 32, generator=torch.Generator().manual_seed(3))
    model.adapters.embeddings = [add_embedding(model, "<tok>", vectors={"text_encoder": vectors})]
    path = tmp_path / "tok.safetensors"
    DiffusionSaver().save(model, path, method=TrainingMethod.EMBEDDING, format="a1111", dtype="fp32")

    pipe = _pipeline(tiny_sd15_dir)
    pipe.load_textual_inversion(str(path), token="<tok>")
    theirs = _diffusers(pipe, "a photo of <tok>")
    fresh = load_model(tiny_sd15_dir)
    fresh.adapters.embeddings = [add_embedding(fresh, "<tok>", vectors=read_embedding_file(path, fresh.spec))]
    assert np.array_equal(_ours(fresh, "a photo of <tok>"), theirs)
    assert np.array_equal(_ours(model, "a photo of <tok>"), theirs)


def test_from_single_file_draws_what_our_sampler_draws(tiny_sd15_dir: Path, tmp_path: Path) -> None:
    from diffusers import StableDiffusionPipeline

    model = load_model(tiny_sd15_dir)
    with torch.no_grad():
        for param in model.unet.parameters():
            param.add_(0.01 * torch.randn(param.shape, generator=torch.Generator().manual_seed(param.numel())))
    path = tmp_path / "model.safetensors"
    DiffusionSaver().save(model, path, method=TrainingMethod.FULL, format="single-file", dtype="fp32")

    pipe = StableDiffusionPipeline.from_single_file(
        str(path), config=str(tiny_sd15_dir), local_files_only=True, safety_checker=None, feature_extractor=None
    )
    pipe.set_progress_bar_config(disable=True)
    theirs = _diffusers(pipe)
    assert np.array_equal(_ours(model), theirs)
    assert np.array_equal(_ours(load_model(path, model_type="sd15", config=str(tiny_sd15_dir))), theirs)
