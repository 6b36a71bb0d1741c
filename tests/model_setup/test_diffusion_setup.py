"""The shared training setup with the SD 1.x/2.x hooks: what trains, the step's prediction and loss,
encoders and state."""

from __future__ import annotations

import copy
import functools
from pathlib import Path
from typing import Any

import pytest
import torch

from onetrainer.model.diffusion import DiffusionModel
from onetrainer.model_loader.pipeline import load_model
from onetrainer.model_saver.diffusion import DiffusionSaver
from onetrainer.model_setup.diffusion import DiffusionSetup
from onetrainer.model_setup.stable_diffusion import StableDiffusionHooks
from onetrainer.util.config.loader import validate
from onetrainer.util.enums import TrainingMethod
from onetrainer.util.errors import ConfigError, UserError
from onetrainer.util.family import tiny_model
from onetrainer.util.registry import ModuleKind, lookup


@functools.cache
def _base(kind: str) -> DiffusionModel:
    return load_model(f"tiny:{kind}")


def _setup(kind: str = "sd15", **config: Any) -> DiffusionSetup:
    """The registered setup of the tiny model `kind`'s family, prepared on the CPU."""
    family = tiny_model(kind)[0].name
    model = {"type": family, "base": f"tiny:{kind}", **config.pop("model", {})}
    setup = lookup(ModuleKind.SETUP, family)(
        copy.deepcopy(_base(kind)), validate({"model": model, **config}, check_paths=False)
    )
    setup.prepare("cpu", torch.float32)
    return setup


def _batch(**extra: Any) -> dict[str, Any]:
    gen = torch.Generator().manual_seed(0)
    return {"latents": torch.randn(2, 4, 8, 8, generator=gen), "captions": ["a red circle", "a <x> square"], **extra}


def _train(setup: DiffusionSetup, steps: int = 2, batch: dict[str, Any] | None = None) -> list[float]:
    optimizer = torch.optim.AdamW([{"params": g["params"], "lr": 1e-2} for g in setup.parameter_groups()])
    setup.train()
    losses = []
    for step in range(steps):
        setup.on_step(step, 0)
        loss = setup.loss(setup.predict(batch or _batch(), torch.Generator().manual_seed(step)), batch or _batch())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize("kind", ["sd15", "sd2"])
def test_registered_as_the_shared_setup_with_the_sd_hooks(kind: str) -> None:
    setup = lookup(ModuleKind.SETUP, kind)(_base(kind), validate({"model": {"type": kind, "base": f"tiny:{kind}"}}))
    assert isinstance(setup, DiffusionSetup)
    assert isinstance(setup.hooks, StableDiffusionHooks)


def test_lora_trains_only_adapter_layers() -> None:
    setup = _setup(method="lora", lora={"rank": 2, "targets": "attn"})
    model = setup.model
    groups = setup.parameter_groups()
    assert [g["name"] for g in groups] == ["unet"]
    assert groups[0]["lr"] == 1e-4
    assert model.adapters.lora.kind == "lora"
    assert model.adapters.lora.rank == 2
    frozen = {k: v.clone() for k, v in model.unet.state_dict().items() if "lora_" not in k}
    lora_before = {k: v.clone() for k, v in model.adapters.lora.state_dicts(model)["unet"].items()}
    _train(setup)
    assert all(torch.equal(model.unet.state_dict()[k], v) for k, v in frozen.items())
    after = model.adapters.lora.state_dicts(model)["unet"]
    assert any(not torch.equal(after[k], v) for k, v in lora_before.items())
    assert setup.text_encoder() is not None  # frozen text encoder: captions can be cached


def test_text_encoder_lora_is_encoded_in_predict() -> None:
    setup = _setup(method="lora", lora={"rank": 2, "type": "loha"}, parts={"text_encoder": {"train": True}})
    assert [g["name"] for g in setup.parameter_groups()] == ["unet", "text_encoder"]
    assert setup.text_encoder() is None
    before = {k: v.clone() for k, v in setup.model.adapters.lora.state_dicts(setup.model)["text_encoder"].items()}
    _train(setup)
    after = setup.model.adapters.lora.state_dicts(setup.model)["text_encoder"]
    assert any(not torch.equal(after[k], v) for k, v in before.items())


def test_full_fine_tune_and_text_encoder_stop() -> None:
    setup = _setup(
        method="full", parts={"text_encoder": {"train": True, "stop_after": "1 step"}}, training={"learning_rate": 1e-5}
    )
    groups = {g["name"]: g for g in setup.parameter_groups()}
    assert set(groups) == {"unet", "text_encoder"}
    assert sum(p.numel() for p in groups["unet"]["params"]) == sum(p.numel() for p in setup.model.unet.parameters())
    assert not any(p.requires_grad for p in setup.model.vae.parameters())
    encoder_before = {k: v.clone() for k, v in setup.model.text_encoder.state_dict().items()}
    setup.on_step(1, 0)
    assert setup.stopped == {"text_encoder"}
    assert not any(p.requires_grad for p in setup.model.text_encoder.parameters())
    _train(setup, steps=1)
    assert all(torch.equal(setup.model.text_encoder.state_dict()[k], v) for k, v in encoder_before.items())


def test_stop_after_epochs_waits_for_the_epoch() -> None:
    setup = _setup(method="full", parts={"text_encoder": {"train": True, "stop_after": "2 epochs"}})
    setup.on_step(100, 1)
    assert not setup.stopped
    setup.on_step(101, 2)
    assert setup.stopped == {"text_encoder"}


def test_nothing_to_train_is_a_user_error() -> None:
    with pytest.raises(UserError, match="nothing to train"):
        _setup(method="full", parts={"unet": {"train": False}})


def test_embedding_trains_only_its_vectors() -> None:
    setup = _setup(method="embedding", embedding={"placeholder": "<x>", "vectors": 2, "init_text": "square"})
    groups = setup.parameter_groups()
    assert [g["name"] for g in groups] == ["embeddings"]
    assert groups[0]["params"][0].shape == (2, 32)
    assert setup.text_encoder() is None
    encoder_before = {k: v.clone() for k, v in setup.model.text_encoder.state_dict().items()}
    vectors_before = setup.model.adapters.embeddings[0].vectors()["text_encoder"]
    _train(setup)
    assert all(torch.equal(setup.model.text_encoder.state_dict()[k], v) for k, v in encoder_before.items())
    assert not torch.equal(setup.model.adapters.embeddings[0].vectors()["text_encoder"], vectors_before)


def test_additional_embeddings_beside_lora() -> None:
    setup = _setup(
        method="lora",
        lora={"rank": 2, "targets": "attn"},
        embedding={"additional": [{"placeholder": "<x>"}, {"placeholder": "<fixed>", "train": False}]},
    )
    groups = {g["name"]: g["params"] for g in setup.parameter_groups()}
    assert set(groups) == {"unet", "embeddings"}
    assert len(groups["embeddings"]) == 1
    assert [e.placeholder for e in setup.model.adapters.embeddings] == ["<x>", "<fixed>"]


@pytest.mark.parametrize(
    ("embedding", "where"),
    [
        ({"placeholder": "cat"}, "embedding.placeholder"),
        ({"additional": [{"placeholder": "<x>"}, {"placeholder": "photo"}]}, "embedding.additional.1.placeholder"),
    ],
)
def test_a_placeholder_in_the_vocabulary_is_refused_by_its_key(embedding: dict[str, Any], where: str) -> None:
    with pytest.raises(UserError, match="already in the vocabulary") as caught:
        _setup(method="embedding", embedding=embedding)
    assert caught.value.where == where


def test_epsilon_target_is_the_drawn_noise() -> None:
    setup = _setup(method="lora", lora={"rank": 2, "targets": "attn"})
    out = setup.predict(_batch(), torch.Generator().manual_seed(4))
    assert out["prediction"].shape == (2, 4, 8, 8)
    expected = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(4))
    assert torch.allclose(out["target"], expected, atol=1e-6)


def test_v_prediction_target_formula() -> None:
    setup = _setup("sd2-v", method="lora", lora={"rank": 2, "targets": "attn"})
    batch = _batch()
    out = setup.predict(batch, torch.Generator().manual_seed(4))
    gen = torch.Generator().manual_seed(4)
    noise = torch.randn(2, 4, 8, 8, generator=gen)
    t = torch.floor(torch.rand(2, generator=gen, dtype=torch.float64) * 1000).long()
    alpha = setup.model.noise_scheduler.alphas_cumprod[t].reshape(-1, 1, 1, 1)
    assert len(set(t.tolist())) == 2  # two different timesteps: the target pins both draws
    expected = alpha.sqrt() * noise - (1 - alpha).sqrt() * batch["latents"]
    assert torch.allclose(out["target"], expected, atol=1e-6)


def test_pixels_and_captions_equal_their_cached_encodings() -> None:
    setup = _setup(method="lora", lora={"rank": 2, "targets": "attn"})
    pixels = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1)) * 2 - 1
    images, texts = setup.image_encoder(), setup.text_encoder()
    images.load()
    texts.load()
    cached = {**images.encode(pixels), **texts.encode(["a cat", "a dog"])}
    raw = {"pixels": pixels, "captions": ["a cat", "a dog"]}
    first = setup.predict(raw, torch.Generator().manual_seed(2))["prediction"]
    second = setup.predict(cached, torch.Generator().manual_seed(2))["prediction"]
    assert cached["latents"].shape == (2, 4, 8, 8)
    assert cached["text_hidden"].shape == (2, 77, 32)
    assert torch.allclose(first, second, atol=1e-5)


def test_encoder_identity_names_weights_and_settings() -> None:
    setup = _setup(method="lora", lora={"rank": 2, "targets": "attn"})
    identity = setup.text_encoder().identity()
    assert identity == setup.text_encoder().identity()
    assert _setup(parts={"text_encoder": {"layer_skip": 1}}).text_encoder().identity() != identity
    vae = setup.image_encoder()
    before = vae.identity()
    with torch.no_grad():
        next(setup.model.vae.parameters()).add_(1.0)
    assert type(vae)(setup.model.vae, vae.device, vae.dtype).identity() != before


def test_masked_loss_and_loss_weight_reach_the_loss() -> None:
    plain = _setup(method="lora", lora={"rank": 2, "targets": "attn"})
    masked = _setup(method="lora", lora={"rank": 2, "targets": "attn"}, loss={"masked": {"enabled": True}})
    mask = torch.zeros(2, 1, 64, 64)
    batch = _batch(mask=mask)
    out = plain.predict(batch, torch.Generator().manual_seed(0))
    full = plain.loss(out, batch)
    assert masked.loss(out, batch).item() == pytest.approx(0.1 * full.item(), rel=1e-5)
    weighted = plain.loss(out, _batch(loss_weight=torch.tensor([2.0, 2.0])))
    assert weighted.item() == pytest.approx(2 * full.item(), rel=1e-5)


def test_trainable_state_round_trip_and_mismatch() -> None:
    trained = _setup(method="lora", lora={"rank": 2, "targets": "attn"})
    _train(trained)
    state = trained.trainable_state_dict()
    other = _setup(method="lora", lora={"rank": 2, "targets": "attn"}, training={"seed": 7})
    other.load_trainable_state_dict(state)
    batch = _batch()
    a = trained.predict(batch, torch.Generator().manual_seed(3))["prediction"]
    b = other.predict(batch, torch.Generator().manual_seed(3))["prediction"]
    assert torch.equal(a, b)
    with pytest.raises(UserError, match="do not match this run"):
        _setup(method="lora", lora={"rank": 2, "targets": "attn-mlp"}).load_trainable_state_dict(state)


def test_same_seed_same_training() -> None:
    first = _train(_setup(method="lora", lora={"rank": 2, "targets": "attn"}))
    assert first == _train(_setup(method="lora", lora={"rank": 2, "targets": "attn"}))


def test_zero_terminal_snr_rescales_the_model_schedule() -> None:
    setup = _setup("sd2-v", method="lora", lora={"rank": 2, "targets": "attn"}, noise={"zero_terminal_snr": True})
    assert setup.model.noise_scheduler.config.rescale_betas_zero_snr
    assert setup.objective is not None
    assert setup.objective.alphas_cumprod[-1].item() == 0.0


def test_zero_terminal_snr_on_a_model_that_predicts_epsilon_is_refused() -> None:
    """`auto` resolves to the model's epsilon: the pure-noise last timestep would have the input as its target."""
    with pytest.raises(ConfigError, match="trains with v_prediction") as info:
        _setup("sd15", method="lora", lora={"rank": 2, "targets": "attn"}, noise={"zero_terminal_snr": True})
    assert [problem.path for problem in info.value.problems] == ["model.prediction_type"]
    assert info.value.exit_code == 2  # a v-prediction model takes it: see the test above


def test_gradient_checkpointing_is_enabled_on_request() -> None:
    setup = _setup(method="full", training={"gradient_checkpointing": True})
    assert setup.model.unet.is_gradient_checkpointing
    assert _train(setup, steps=1)[0] > 0


def test_lora_init_from_file(tmp_path: Path) -> None:
    trained = _setup(method="lora", lora={"rank": 2, "targets": "attn"})
    _train(trained)
    path = tmp_path / "start.safetensors"
    DiffusionSaver().save(trained.model, path, method=TrainingMethod.LORA, format="kohya", dtype="fp32")
    resumed = _setup(method="lora", lora={"rank": 2, "targets": "attn", "init_from": str(path)})
    for key, value in trained.trainable_state_dict().items():
        assert torch.allclose(resumed.trainable_state_dict()[key], value), key


@pytest.mark.parametrize(
    ("fmt", "axis", "magnitude"),
    [("auto", "input", "lora_magnitude_vector.input_magnitude"), ("peft", "output", "lora_magnitude_vector")],
)
def test_dora_trains_its_magnitudes_on_the_axis_its_output_format_is_read_with(
    fmt: str, axis: str, magnitude: str
) -> None:
    setup = _setup(method="lora", lora={"rank": 2, "targets": "attn", "type": "dora"}, saving={"format": fmt})
    adapter = setup.model.adapters.lora
    assert adapter.dora_axis == axis
    state = adapter.state_dicts(setup.model)["unet"]
    before = {k: v.clone() for k, v in state.items() if k.endswith(magnitude)}
    assert len(before) == sum(k.endswith(".lora_A.weight") for k in state)  # one magnitude per adapted layer
    _train(setup)
    after = adapter.state_dicts(setup.model)["unet"]
    assert all(not torch.equal(after[key], value) for key, value in before.items())


def test_a_dora_backup_does_not_continue_on_the_other_axis() -> None:
    state = _setup(method="lora", lora={"rank": 2, "targets": "attn", "type": "dora"}).trainable_state_dict()
    other = _setup(method="lora", lora={"rank": 2, "targets": "attn", "type": "dora"}, saving={"format": "peft"})
    with pytest.raises(UserError, match="do not match this run"):
        other.load_trainable_state_dict(state)


def test_a_prior_samples_target_sees_the_conditioning_its_trained_pass_saw() -> None:
    """With a LoRA on the text encoder its captions are encoded again for the target (without the LoRA); where
    caption dropout zeroed the trained pass's conditioning, the target's is zeroed too, or the LoRA would learn
    to draw the caption from empty conditioning, which classifier-free guidance relies on."""
    prior = {"concepts": [{"path": "priors", "type": "prior"}]}
    setup = _setup(
        method="lora",
        lora={"rank": 2},
        data=prior,
        parts={"text_encoder": {"train": True, "dropout": 1.0}},
    )
    setup.train()
    seen: list[torch.Tensor] = []
    denoise = setup.hooks.denoise

    def spy(model: Any, noisy: Any, timesteps: Any, conditioning: dict[str, Any], batch: Any) -> Any:
        seen.append(conditioning["text_hidden"].detach().clone())
        return denoise(model, noisy, timesteps, conditioning, batch)

    setup.hooks.denoise = spy  # type: ignore[method-assign]
    setup.predict(_batch(is_prior=torch.tensor([True, True])), torch.Generator().manual_seed(0))
    assert len(seen) == 2, "the trained pass, then the target's pass without the LoRA"
    assert all(not conditioning.any() for conditioning in seen)


def test_the_step_marks_the_samples_it_trains_without_their_mask() -> None:
    masked = {"masked": {"enabled": True, "unmasked_probability": 1.0}}
    outputs = _setup(loss=masked).predict(_batch(), torch.Generator().manual_seed(0))
    assert outputs["unmasked"].tolist() == [True, True]
    assert "unmasked" not in _setup(loss={"masked": {"enabled": True}}).predict(_batch(), torch.Generator())
