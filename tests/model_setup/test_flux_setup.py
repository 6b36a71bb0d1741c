"""The FLUX.1 hooks: conditioning and the packed transformer call as diffusers' `FluxPipeline` makes them,
the flow-matching schedule from the model's own scheduler, guidance, masked loss and prior preservation."""

from __future__ import annotations

import copy
import functools
from typing import Any

import pytest
import torch

from onetrainer.model.adapters.embedding import add_embedding
from onetrainer.model.diffusion import DiffusionModel
from onetrainer.model_loader.pipeline import load_model
from onetrainer.model_setup.diffusion import DiffusionSetup
from onetrainer.model_setup.flux import POOLED_KEY, TEXT_KEY, FluxHooks, image_ids, pack, unpack
from onetrainer.util.config.loader import validate
from onetrainer.util.errors import UserError
from onetrainer.util.registry import ModuleKind, lookup
from onetrainer.util.tiny.models import build_tiny_flux_pipeline

CAPTIONS = ["a red circle", "a blue square on a green triangle"]
CPU = torch.device("cpu")


@functools.cache
def _base(kind: str) -> DiffusionModel:
    return load_model(f"tiny:{kind}")


def _model(kind: str = "flux-dev", **options: Any) -> DiffusionModel:
    """A fresh copy in eval mode (T5 has dropout), with these `model.options`."""
    model = copy.deepcopy(_base(kind))
    model.options = options
    for _, module in model.modules():
        module.eval()
    return model


def _setup(kind: str = "flux-dev", **config: Any) -> DiffusionSetup:
    model_section = {"type": kind, "base": f"tiny:{kind}", **config.pop("model", {})}
    settings = validate({"model": model_section, **config}, check_paths=False)
    model = _model(kind, **settings.model.options)
    setup: DiffusionSetup = lookup(ModuleKind.SETUP, kind)(model, settings)
    setup.prepare("cpu", torch.float32)
    return setup


def _noisy(batch: int = 1, height: int = 8, width: int = 6) -> torch.Tensor:
    return torch.randn(batch, 16, height, width, generator=torch.Generator().manual_seed(0))


def test_packing_and_position_ids_are_the_pipelines() -> None:
    from diffusers import FluxPipeline

    latents = _noisy(2)
    packed = pack(latents)
    assert torch.equal(packed, FluxPipeline._pack_latents(latents, 2, 16, 8, 6))
    assert torch.equal(unpack(packed, 8, 6), latents)
    assert torch.equal(unpack(packed, 8, 6), FluxPipeline._unpack_latents(packed, 64, 48, 8))
    assert torch.equal(
        image_ids(8, 6, CPU, torch.float32), FluxPipeline._prepare_latent_image_ids(2, 4, 3, CPU, torch.float32)
    )


@pytest.mark.parametrize(("kind", "length"), [("flux-dev", 512), ("flux-schnell", 256)])
def test_conditioning_is_what_the_pipeline_encodes(kind: str, length: int) -> None:
    pipe = build_tiny_flux_pipeline(guidance=kind == "flux-dev")
    pipe.text_encoder_2.eval()
    ours = FluxHooks().conditioner(_model(kind), layer_skip={}, device=CPU).encode(CAPTIONS)
    with torch.no_grad():  # as ours: attention takes another kernel with gradients
        prompt, pooled, _ = pipe.encode_prompt(CAPTIONS, None, device="cpu", max_sequence_length=length)
    assert ours[TEXT_KEY].shape == (2, length, 48)
    assert torch.equal(ours[TEXT_KEY], prompt)
    assert torch.equal(ours[POOLED_KEY], pooled)


def test_the_t5_length_is_an_option_and_part_of_the_cache_identity() -> None:
    short = FluxHooks().conditioner(_model(t5_max_length=16), layer_skip={}, device=CPU)
    assert short.encode(CAPTIONS)[TEXT_KEY].shape == (2, 16, 48)
    default = FluxHooks().conditioner(_model(), layer_skip={}, device=CPU)
    assert short.identity() != default.identity()
    counts, limit = short.caption_token_counts(["a photo of a cat"])
    assert (counts, limit) == ([5], 15), "T5 counts its pieces, and closes each text with </s>"


def test_layer_skip_does_not_apply() -> None:
    with pytest.raises(UserError, match="layer_skip does not apply") as error:
        FluxHooks().conditioner(_model(), layer_skip={"text_encoder_2": 1}, device=CPU)
    assert error.value.where == "parts.text_encoder_2.layer_skip"


@pytest.mark.parametrize("guidance", [1.0, 4.0])
def test_denoise_is_the_pipelines_transformer_call(guidance: float) -> None:
    from diffusers import FluxPipeline

    model = _model(guidance=guidance)
    conditioning = FluxHooks().conditioner(model, layer_skip={}, device=CPU).encode(CAPTIONS[:1])
    noisy, sigma = _noisy(), torch.tensor([0.7])
    with torch.no_grad():
        ours = FluxHooks().denoise(model, noisy, sigma * 1000, conditioning, {})
        theirs = model.transformer(
            hidden_states=FluxPipeline._pack_latents(noisy, 1, 16, 8, 6),
            timestep=sigma,
            guidance=torch.tensor([guidance]),
            pooled_projections=conditioning[POOLED_KEY],
            encoder_hidden_states=conditioning[TEXT_KEY],
            txt_ids=torch.zeros(512, 3),
            img_ids=FluxPipeline._prepare_latent_image_ids(1, 4, 3, CPU, torch.float32),
            return_dict=False,
        )[0]
    assert torch.equal(ours, FluxPipeline._unpack_latents(theirs, 64, 48, 8))


def test_the_training_guidance_reaches_the_transformer() -> None:
    conditioning = FluxHooks().conditioner(_model(), layer_skip={}, device=CPU).encode(CAPTIONS[:1])
    with torch.no_grad():
        one, four = (
            FluxHooks().denoise(_model(guidance=g), _noisy(), torch.tensor([500.0]), conditioning, {})
            for g in (1.0, 4.0)
        )
    assert not torch.equal(one, four)


def test_dev_shifts_by_resolution_as_its_scheduler_says_and_schnell_not_at_all() -> None:
    from onetrainer.model_setup.flow_matching import resolution_shift_sigmas

    dev, schnell = _setup("flux-dev"), _setup("flux-schnell")
    assert dev.objective.dynamic
    assert not schnell.objective.dynamic
    assert (dev.objective.resolution_shift.base_shift, dev.objective.resolution_shift.max_shift) == (0.5, 1.15)
    assert schnell.objective.shift == 1.0
    units = torch.rand(4, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(schnell.objective.sigmas(4, torch.Generator().manual_seed(2), 16), units)
    mu = dev.objective.resolution_shift.mu(4096)
    expected = resolution_shift_sigmas(units, mu)
    torch.testing.assert_close(dev.objective.sigmas(4, torch.Generator().manual_seed(2), 4096), expected)
    assert dev.image_seq_len(torch.zeros(1, 16, 128, 128)) == 4096, "one token per 2x2 latent patch"


def test_a_training_step_predicts_the_flow_matching_target() -> None:
    setup = _setup(method="lora", lora={"rank": 2})
    latents = _noisy(2)
    batch = {"latents": latents, "captions": CAPTIONS}
    out = setup.predict(batch, torch.Generator().manual_seed(5))
    generator = torch.Generator().manual_seed(5)
    noise = torch.randn(latents.shape, generator=generator)
    assert out["prediction"].shape == out["target"].shape == (2, 16, 8, 6)
    torch.testing.assert_close(out["target"], noise - latents)
    loss = setup.loss(out, batch)
    loss.backward()
    assert torch.isfinite(loss)


def test_masked_loss_counts_only_the_masked_pixels() -> None:
    setup = _setup(
        method="lora",
        lora={"rank": 2},
        loss={"masked": {"enabled": True, "unmasked_weight": 0.0, "normalize_area": True}},
    )
    batch = {"latents": _noisy(1), "captions": CAPTIONS[:1]}
    out = setup.predict(batch, torch.Generator().manual_seed(1))
    mask = torch.zeros(1, 1, 8, 6)
    mask[..., :4, :] = 1
    masked = setup.loss(out, {**batch, "mask": mask})
    inside = {**out, "prediction": out["prediction"][..., :4, :], "target": out["target"][..., :4, :]}
    assert torch.isclose(masked, setup.loss(inside, batch))


def test_prior_samples_learn_the_prediction_without_the_lora() -> None:
    prior = {"concepts": [{"path": "priors", "type": "prior"}]}  # a run with prior concepts looks at `is_prior`
    setup = _setup(method="lora", lora={"rank": 2}, data=prior)
    for param in setup.trainables.parameters("transformer"):
        torch.nn.init.normal_(param, std=0.5)
    batch = {"latents": _noisy(2), "captions": CAPTIONS, "is_prior": torch.tensor([True, False])}
    out = setup.predict(batch, torch.Generator().manual_seed(3))
    plain = setup.predict({**batch, "is_prior": torch.tensor([False, False])}, torch.Generator().manual_seed(3))
    assert torch.equal(out["target"][1], plain["target"][1])
    assert not torch.allclose(out["target"][0], plain["target"][0])
    assert not torch.allclose(out["target"][0], out["prediction"][0].float()), "the LoRA was disabled for the target"
    trains = [param.requires_grad for param in setup.trainables.parameters("transformer")]
    assert all(trains), "the LoRA trains again after the target"
    setup.loss(out, batch).backward()


def test_an_embedding_conditions_clip_and_t5_and_trains_on_both() -> None:
    model = _model()
    model.adapters.embeddings.append(add_embedding(model, "<shape>", count=2, init_text="circle"))
    conditioner = FluxHooks().conditioner(model, layer_skip={}, device=CPU)
    outputs = conditioner.encode_for_training(["a <shape> on a square"])
    # squares: a sum over a layer norm's output (CLIP's pooled one) has no gradient
    (outputs[TEXT_KEY].pow(2).sum() + outputs[POOLED_KEY].pow(2).sum()).backward()
    embedding = model.adapters.embeddings[0]
    assert set(embedding.parameters) == {"text_encoder", "text_encoder_2"}
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in embedding.parameters.values())


def test_lora_on_clip_and_t5_trains_with_uncached_conditioning() -> None:
    setup = _setup(
        method="lora", lora={"rank": 2}, parts={"text_encoder": {"train": True}, "text_encoder_2": {"train": True}}
    )
    assert setup.text_encoder() is None
    batch = {"latents": _noisy(2), "captions": CAPTIONS}
    setup.loss(setup.predict(batch, torch.Generator().manual_seed(0)), batch).backward()
    for part in ("text_encoder", "text_encoder_2"):
        grads = [p.grad for p in setup.trainables.parameters(part)]
        assert any(grad is not None and grad.abs().sum() > 0 for grad in grads), part


@pytest.mark.parametrize(
    ("preset", "count"), [("attn", 2 * 8 + 2 * 3), ("attn-mlp", 2 * 12 + 2 * 5), ("full", 2 * 14 + 2 * 6)]
)
def test_transformer_presets_adapt_attention_then_mlp_then_modulation(preset: str, count: int) -> None:
    setup = _setup(method="lora", lora={"rank": 2, "targets": preset})
    adapted = {name.split(".lora_A")[0] for name, _ in setup.model.transformer.named_parameters() if ".lora_A." in name}
    assert len(adapted) == count


def test_frozen_text_encoders_wait_on_the_cpu_for_the_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    """T5-XXL is 9.5 GB: frozen, it goes to the device only for a caching pass (or a preview), and back;
    when an encoder trains, the text is not cached and both encoders run in every step: they stay there."""
    import onetrainer.model_setup.diffusion as diffusion

    class Placed(Exception):
        pass

    def placements(**config: Any) -> dict[str, tuple[str, torch.dtype]]:
        placed: dict[str, Any] = {}

        def record(model: DiffusionModel, policy: dict[str, Any], *_: Any, **__: Any) -> None:
            placed.update(policy)
            raise Placed

        monkeypatch.setattr(diffusion, "apply_placement", record)
        settings = validate({"model": {"type": "flux-dev", "base": "tiny:flux-dev"}, **config}, check_paths=False)
        setup = lookup(ModuleKind.SETUP, "flux-dev")(_model(), settings)
        with pytest.raises(Placed):
            setup.prepare(torch.device("meta"), torch.bfloat16)
        return {name: (placement.device.type, placement.storage_dtype) for name, placement in placed.items()}

    frozen = placements()
    assert {name: device for name, (device, _) in frozen.items()} == {
        "transformer": "meta", "text_encoder": "cpu", "text_encoder_2": "cpu", "vae": "meta"
    }  # fmt: skip
    assert frozen["text_encoder_2"][1] == torch.bfloat16
    trained = placements(parts={"text_encoder_2": {"train": True}})
    assert (trained["text_encoder"][0], trained["text_encoder_2"][0]) == ("meta", "meta"), "uncached: both run"


@pytest.mark.parametrize(
    ("lora", "saving", "refused"),
    [
        ({"type": "dora"}, {}, True),
        ({"type": "dora"}, {"format": "peft"}, False),
        ({"type": "lokr"}, {}, True),
        ({"type": "lokr", "regex": r"\.ff\.net\.2$"}, {}, False),
        ({"type": "loha"}, {}, False),
    ],
)
def test_adapters_without_an_exact_kohya_form_are_refused_before_training(
    lora: dict[str, Any], saving: dict[str, Any], refused: bool
) -> None:
    settings = validate(
        {"model": {"type": "flux-dev", "base": "tiny:flux-dev"}, "lora": {"rank": 2, **lora}, "saving": saving},
        check_paths=False,
    )
    make = lookup(ModuleKind.SETUP, "flux-dev")
    if refused:
        with pytest.raises(UserError, match="no exact form in the kohya layout") as error:
            make(_model(), settings)
        assert error.value.where == "saving.format"
    else:
        make(_model(), settings).prepare("cpu", torch.float32)
