"""The SDXL hooks: conditioning as diffusers' SDXL pipeline computes it, and the size-conditioned UNet call."""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable
from typing import Any

import pytest
import torch

from onetrainer.model.adapters.embedding import add_embedding
from onetrainer.model.diffusion import DiffusionModel
from onetrainer.model_loader.pipeline import load_model
from onetrainer.model_setup.diffusion import DiffusionSetup
from onetrainer.model_setup.sdxl import POOLED_KEY, TEXT_KEY, SdxlHooks
from onetrainer.util.config.loader import validate
from onetrainer.util.registry import ModuleKind, lookup
from onetrainer.util.tiny.models import build_tiny_sdxl_pipeline

CAPTIONS = ["a red circle", "a blue square on a green triangle"]


@functools.cache
def _base() -> DiffusionModel:
    return load_model("tiny:sdxl")


def _model() -> DiffusionModel:
    return copy.deepcopy(_base())


def _setup(**config: Any) -> DiffusionSetup:
    settings = {"model": {"type": "sdxl", "base": "tiny:sdxl"}, **config}
    setup: DiffusionSetup = lookup(ModuleKind.SETUP, "sdxl")(_model(), validate(settings, check_paths=False))
    setup.prepare("cpu", torch.float32)
    return setup


def _encode(model: DiffusionModel, captions: list[str], **layer_skip: int) -> dict[str, torch.Tensor]:
    return SdxlHooks().conditioner(model, layer_skip=layer_skip, device=torch.device("cpu")).encode(captions)


@pytest.mark.parametrize("clip_skip", [None, 1])
def test_conditioning_is_what_the_sdxl_pipeline_computes(clip_skip: int | None) -> None:
    pipe = build_tiny_sdxl_pipeline()
    skip = clip_skip or 0
    ours = _encode(_model(), CAPTIONS, text_encoder=skip, text_encoder_2=skip)
    encoded = [  # caption by caption, as the CPU encodes for the cache (`row_by_row_on_cpu`)
        pipe.encode_prompt([caption], device="cpu", do_classifier_free_guidance=False, clip_skip=clip_skip)
        for caption in CAPTIONS
    ]
    prompt, pooled = torch.cat([row[0] for row in encoded]), torch.cat([row[2] for row in encoded])
    assert ours[TEXT_KEY].shape == (2, 77, 32 + 64), "CLIP-L's width first, then bigG's"
    assert torch.equal(ours[TEXT_KEY], prompt)
    assert torch.equal(ours[POOLED_KEY], pooled)


def test_layer_skip_is_per_encoder_and_part_of_the_cache_identity() -> None:
    model = _model()
    base = _encode(model, CAPTIONS)
    skipped = _encode(model, CAPTIONS, text_encoder_2=1)
    assert torch.equal(skipped[TEXT_KEY][..., :32], base[TEXT_KEY][..., :32])
    assert not torch.equal(skipped[TEXT_KEY][..., 32:], base[TEXT_KEY][..., 32:])
    assert torch.equal(skipped[POOLED_KEY], base[POOLED_KEY]), "the pooled output is always the last layer's"
    hooks, cpu = SdxlHooks(), torch.device("cpu")
    identities = {
        hooks.conditioner(model, layer_skip=skip, device=cpu).identity() for skip in ({}, {"text_encoder_2": 1})
    }
    assert len(identities) == 2


def test_an_embedding_conditions_both_encoders_and_trains_on_both() -> None:
    model = _model()
    model.adapters.embeddings.append(add_embedding(model, "<shape>", count=2, init_text="circle"))
    conditioner = SdxlHooks().conditioner(model, layer_skip={}, device=torch.device("cpu"))
    outputs = conditioner.encode_for_training(["a <shape> on a square"])
    (outputs[TEXT_KEY].sum() + outputs[POOLED_KEY].sum()).backward()
    embedding = model.adapters.embeddings[0]
    assert set(embedding.parameters) == {"text_encoder", "text_encoder_2"}
    assert all(
        parameter.grad is not None and parameter.grad.abs().sum() > 0 for parameter in embedding.parameters.values()
    )


def _sizes(original: tuple[int, int], crop: tuple[int, int], count: int = 1) -> dict[str, Any]:
    """A batch's size conditioning: `count` samples of a 64x64 target cropped from `original` at `crop`."""
    return {
        "original_size": torch.tensor([original] * count),
        "crop_top_left": torch.tensor([crop] * count),
        "target_size": torch.tensor([(64, 64)] * count),
    }


def test_denoise_passes_the_batch_size_conditioning_as_time_ids() -> None:
    model = _model()
    conditioning = _encode(model, CAPTIONS[:1])
    noisy = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    timesteps = torch.tensor([500])
    with torch.no_grad():
        ours = SdxlHooks().denoise(model, noisy, timesteps, conditioning, _sizes((96, 128), (0, 16)))
        reference = model.unet(
            noisy,
            timesteps,
            encoder_hidden_states=conditioning[TEXT_KEY],
            added_cond_kwargs={
                "text_embeds": conditioning[POOLED_KEY],
                "time_ids": torch.tensor([[96.0, 128.0, 0.0, 16.0, 64.0, 64.0]]),
            },
        ).sample
        other = SdxlHooks().denoise(model, noisy, timesteps, conditioning, _sizes((64, 64), (0, 0)))
    assert torch.equal(ours, reference)
    assert not torch.equal(ours, other), "the size conditioning reaches the UNet"


def test_lora_on_both_text_encoders_trains_with_uncached_conditioning() -> None:
    setup = _setup(
        method="lora",
        lora={"rank": 2},
        parts={"text_encoder": {"train": True}, "text_encoder_2": {"train": True, "learning_rate": 1e-5}},
    )
    groups = {group["name"]: group["lr"] for group in setup.parameter_groups()}
    assert groups == {"unet": 1e-4, "text_encoder": 1e-4, "text_encoder_2": 1e-5}
    assert setup.text_encoder() is None, "captions are encoded in the step while an encoder trains"
    batch = {"latents": torch.randn(2, 4, 8, 8), "captions": CAPTIONS, **_sizes((64, 64), (0, 0), count=2)}
    loss = setup.loss(setup.predict(batch, torch.Generator().manual_seed(0)), batch)
    loss.backward()
    assert torch.isfinite(loss)
    grads = [p.grad for group in setup.parameter_groups() for p in group["params"] if group["name"] == "text_encoder_2"]
    assert any(grad is not None and grad.abs().sum() > 0 for grad in grads)


def test_frozen_encoders_are_cached_with_both_outputs() -> None:
    setup = _setup(method="lora", lora={"rank": 2})
    conditioner = setup.text_encoder()
    assert conditioner is not None
    assert conditioner.output_keys == (TEXT_KEY, POOLED_KEY)
    assert set(conditioner.encode(CAPTIONS)) == {TEXT_KEY, POOLED_KEY}


def test_a_force_upcast_vae_is_not_stored_in_fp16_unless_asked() -> None:
    settings = {"model": {"type": "sdxl", "base": "tiny:sdxl"}, "method": "lora"}
    for parts, expected in (({}, torch.float32), ({"vae": {"weight_dtype": "fp16"}}, torch.float16)):
        model = _model()
        assert model.vae.config.force_upcast
        setup = DiffusionSetup(model, validate({**settings, "parts": parts}, check_paths=False), SdxlHooks())
        setup.prepare("cpu", torch.float16)
        assert model.vae.dtype == expected
        assert model.unet.dtype == torch.float16


@pytest.mark.parametrize(
    ("encoder", "zeroed", "pooled_zeroed"),
    [("text_encoder", slice(0, 32), False), ("text_encoder_2", slice(32, 96), True)],
)
def test_one_encoders_dropout_zeroes_its_channels(
    encoder: str, zeroed: slice, pooled_zeroed: bool, denoised_conditioning: Callable[..., dict[str, torch.Tensor]]
) -> None:
    """OneTrainer drops one SDXL encoder by zeroing its output before the two are joined: CLIP-L's 768 channels,
    or bigG's 1280 and its pooled vector; the other encoder's conditioning is untouched."""
    setup = _setup(method="lora", lora={"rank": 2}, parts={encoder: {"dropout": 1.0}})
    seen = denoised_conditioning(setup)
    setup.train()
    encoded = _encode(setup.model, CAPTIONS)
    sizes = {key: torch.tensor([[8, 8]] * 2) for key in ("original_size", "target_size")}
    batch = {**encoded, "latents": torch.randn(2, 4, 8, 8), "crop_top_left": torch.zeros(2, 2), **sizes}
    setup.predict(batch, torch.Generator().manual_seed(0))
    kept = torch.ones(96, dtype=torch.bool)
    kept[zeroed] = False
    assert seen[TEXT_KEY][..., ~kept].abs().sum() == 0
    assert torch.equal(seen[TEXT_KEY][..., kept], encoded[TEXT_KEY][..., kept])
    assert bool(seen[POOLED_KEY].abs().sum() == 0) is pooled_zeroed
    if not pooled_zeroed:
        assert torch.equal(seen[POOLED_KEY], encoded[POOLED_KEY])
