"""The SD sampler: same images as diffusers' pipeline on the same components, seeds, sizes, errors."""

from __future__ import annotations

import copy
import functools

import numpy as np
import pytest
import torch

from onetrainer.model.diffusion import DiffusionModel
from onetrainer.model_loader.pipeline import load_model
from onetrainer.model_sampler.schedulers import SCHEDULERS, build_scheduler
from onetrainer.model_sampler.stable_diffusion import StableDiffusionSampler
from onetrainer.util.errors import UserError
from onetrainer.util.family import Objective
from onetrainer.util.registry import ModuleKind, lookup

DDPM_SCHEDULERS = SCHEDULERS[Objective.DDPM]


@functools.cache
def _base(kind: str) -> DiffusionModel:
    return load_model(f"tiny:{kind}")


def _model(kind: str = "sd15") -> DiffusionModel:
    return copy.deepcopy(_base(kind))


def _diffusers_image(model: DiffusionModel, scheduler: str, prompt: str, seed: int, cfg: float) -> np.ndarray:
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline(
        vae=model.vae,
        text_encoder=model.text_encoder,
        tokenizer=model.tokenizer,
        unet=model.unet,
        scheduler=build_scheduler(scheduler, model.noise_scheduler.config),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    result = pipe(
        prompt,
        negative_prompt="blurry",
        num_inference_steps=4,
        guidance_scale=cfg,
        generator=torch.Generator().manual_seed(seed),
    )
    return np.asarray(result.images[0])


def test_registered_for_sd15_and_sd2() -> None:
    assert lookup(ModuleKind.SAMPLER, "sd15") is StableDiffusionSampler
    assert lookup(ModuleKind.SAMPLER, "sd2") is StableDiffusionSampler


@pytest.mark.parametrize("scheduler", list(DDPM_SCHEDULERS))
def test_same_image_as_the_diffusers_pipeline(scheduler: str) -> None:
    model = _model()
    ours = StableDiffusionSampler(model).sample("a red circle", "blurry", steps=4, cfg=7.5, seed=3, scheduler=scheduler)
    assert np.array_equal(np.asarray(ours[0]), _diffusers_image(model, scheduler, "a red circle", 3, 7.5))


@pytest.mark.parametrize("cfg", [1.0, 5.0])
def test_v_prediction_model_matches_diffusers_with_and_without_guidance(cfg: float) -> None:
    model = _model("sd2-v")
    ours = StableDiffusionSampler(model).sample("a square", "blurry", steps=4, cfg=cfg, seed=1, scheduler="euler")
    assert np.array_equal(np.asarray(ours[0]), _diffusers_image(model, "euler", "a square", 1, cfg))


def test_each_image_of_a_batch_has_its_own_seed() -> None:
    sampler = StableDiffusionSampler(_model())
    batch = sampler.sample("a cat", steps=3, seed=10, count=2, scheduler="ddim")
    alone = sampler.sample("a cat", steps=3, seed=11, scheduler="ddim")
    assert batch[0].size == (64, 64)
    assert np.array_equal(np.asarray(batch[1]), np.asarray(alone[0]))
    assert not np.array_equal(np.asarray(batch[0]), np.asarray(batch[1]))


def test_size_and_progress() -> None:
    calls: list[tuple[int, int]] = []
    images = StableDiffusionSampler(_model()).sample(
        "a cat", steps=3, width=96, height=32, count=2, scheduler="euler-a", progress=lambda d, t: calls.append((d, t))
    )
    assert images[0].size == (96, 32)
    assert calls == [(step, 6) for step in range(1, 7)]


def test_layer_skip_changes_the_image() -> None:
    model = _model()
    plain = StableDiffusionSampler(model).sample("a cat", steps=2, seed=0, scheduler="ddim")[0]
    skipped = StableDiffusionSampler(model, layer_skip={"text_encoder": 1}).sample(
        "a cat", steps=2, seed=0, scheduler="ddim"
    )[0]
    assert not np.array_equal(np.asarray(plain), np.asarray(skipped))


def test_bad_inputs_are_user_errors() -> None:
    sampler = StableDiffusionSampler(_model())
    with pytest.raises(UserError, match="unknown scheduler 'eulr'; did you mean 'euler'") as error:
        sampler.sample("a cat", scheduler="eulr")
    assert "ddim, euler, euler-a, dpm++2m, dpm++2m-karras, unipc, ddpm" in error.value.hint
    with pytest.raises(UserError, match="multiple of 8"):
        sampler.sample("a cat", width=60)


def test_sampling_restores_training_mode() -> None:
    model = _model()
    model.unet.train()
    model.text_encoder.eval()
    StableDiffusionSampler(model).sample("a cat", steps=1, scheduler="ddim")
    assert model.unet.training
    assert not model.text_encoder.training


@pytest.mark.parametrize("kind", ["sd15", "sd2-v"])
@pytest.mark.parametrize("scheduler", list(DDPM_SCHEDULERS))
def test_tiny_model_draws_what_the_same_diffusers_pipeline_draws(scheduler: str, kind: str) -> None:
    """The reference is diffusers alone: the tiny pipeline with its scheduler swapped the documented way
    (`from_config` of the pipeline's scheduler config), so each solver keeps its own defaults."""
    import diffusers

    from onetrainer.util.tiny.models import build_tiny_pipeline

    pipe = build_tiny_pipeline(kind)
    class_name, settings = DDPM_SCHEDULERS[scheduler]
    pipe.scheduler = getattr(diffusers, class_name).from_config(pipe.scheduler.config, **settings)
    theirs = pipe(
        "a red circle",
        negative_prompt="blurry",
        num_inference_steps=4,
        guidance_scale=7.5,
        generator=torch.Generator().manual_seed(3),
    ).images[0]
    ours = StableDiffusionSampler(_model(kind)).sample(
        "a red circle", "blurry", steps=4, cfg=7.5, seed=3, scheduler=scheduler
    )
    assert np.array_equal(np.asarray(ours[0]), np.asarray(theirs))
