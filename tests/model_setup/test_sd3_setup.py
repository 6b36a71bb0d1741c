"""The SD 3 hooks: three-encoder conditioning and the MMDiT call as diffusers' `StableDiffusion3Pipeline`
makes them, SD 3's training defaults (shift 3, logit-normal), T5-less training, per-encoder dropout."""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from onetrainer.model.adapters.embedding import add_embedding
from onetrainer.model.diffusion import DiffusionModel
from onetrainer.model_loader.pipeline import load_model
from onetrainer.model_setup.diffusion import DiffusionSetup
from onetrainer.model_setup.sd3 import G_HIDDEN, G_POOLED, L_HIDDEN, L_POOLED, T5_HIDDEN, Sd3Hooks, assemble
from onetrainer.util.config.loader import validate
from onetrainer.util.errors import UserError
from onetrainer.util.registry import ModuleKind, lookup
from onetrainer.util.tiny.sd3 import build_tiny_sd3_pipeline

CAPTIONS = ["a red circle", "a blue square on a green triangle"]
CPU = torch.device("cpu")


@functools.cache
def _base(kind: str, t5: bool) -> DiffusionModel:
    return load_model(f"tiny:{kind}", options={} if t5 else {"t5": False})


def _model(kind: str = "sd35-large", *, t5: bool = True, **options: Any) -> DiffusionModel:
    """A fresh copy in eval mode (T5 has dropout), with these `model.options`."""
    model = copy.deepcopy(_base(kind, t5))
    model.options = {**options, **({} if t5 else {"t5": False})}
    for _, module in model.modules():
        module.eval()
    return model


def _setup(kind: str = "sd35-large", **config: Any) -> DiffusionSetup:
    model_section = {"type": kind, "base": f"tiny:{kind}", **config.pop("model", {})}
    settings = validate({"model": model_section, **config}, check_paths=False)
    options = settings.model.options
    model = _model(kind, t5=options.get("t5", True), **{k: v for k, v in options.items() if k != "t5"})
    setup: DiffusionSetup = lookup(ModuleKind.SETUP, kind)(model, settings)
    setup.prepare("cpu", torch.float32)
    return setup


def _noisy(batch: int = 1) -> torch.Tensor:
    return torch.randn(batch, 16, 8, 6, generator=torch.Generator().manual_seed(0))


def _pipeline(kind: str, *, t5: bool = True) -> Any:
    pipe = build_tiny_sd3_pipeline(kind)
    if not t5:
        pipe.text_encoder_3 = pipe.tokenizer_3 = None
    for module in (pipe.text_encoder, pipe.text_encoder_2, pipe.text_encoder_3):
        if module is not None:
            module.eval()
    return pipe


@pytest.mark.parametrize("t5", [True, False])
@pytest.mark.parametrize("kind", ["sd35-large", "sd35-medium", "sd3-medium"])
def test_conditioning_is_what_the_pipeline_encodes(kind: str, t5: bool) -> None:
    model = _model(kind, t5=t5)
    ours = Sd3Hooks().conditioner(model, layer_skip={}, device=CPU).encode(CAPTIONS)
    assert (T5_HIDDEN in ours) == t5
    pipe = _pipeline(kind, t5=t5)
    with torch.no_grad():  # caption by caption, as the CPU encodes for the cache (`row_by_row_on_cpu`)
        encoded = [
            pipe.encode_prompt(
                [caption],
                [caption],
                [caption],
                device="cpu",
                do_classifier_free_guidance=False,
                max_sequence_length=256,
            )
            for caption in CAPTIONS
        ]
    prompt, pooled = torch.cat([row[0] for row in encoded]), torch.cat([row[2] for row in encoded])
    joined, joined_pooled = assemble(model, ours, CPU, torch.float32)
    assert joined.shape == (2, 77 + 256, 96)
    assert torch.equal(joined, prompt)
    assert torch.equal(joined_pooled, pooled)
    assert (ours[L_HIDDEN].shape[-1], ours[G_HIDDEN].shape[-1]) == (32, 48), "each encoder's own tensors"


def test_layer_skip_reaches_each_clip_encoder_and_not_t5() -> None:
    model = _model()
    plain = Sd3Hooks().conditioner(model, layer_skip={}, device=CPU)
    skipped = Sd3Hooks().conditioner(model, layer_skip={"text_encoder_2": 1}, device=CPU)
    a, b = plain.encode(CAPTIONS[:1]), skipped.encode(CAPTIONS[:1])
    assert torch.equal(a[L_HIDDEN], b[L_HIDDEN])
    assert not torch.equal(a[G_HIDDEN], b[G_HIDDEN])
    assert plain.identity() != skipped.identity()
    with pytest.raises(UserError, match="layer_skip applies to its CLIP encoders only") as error:
        Sd3Hooks().conditioner(model, layer_skip={"text_encoder_3": 1}, device=CPU)
    assert error.value.where == "parts.text_encoder_3.layer_skip"


def test_the_t5_length_is_an_option_and_part_of_the_cache_identity() -> None:
    short = Sd3Hooks().conditioner(_model(t5_max_length=16), layer_skip={}, device=CPU)
    assert short.encode(CAPTIONS)[T5_HIDDEN].shape == (2, 16, 96)
    default = Sd3Hooks().conditioner(_model(), layer_skip={}, device=CPU)
    without = Sd3Hooks().conditioner(_model(t5=False), layer_skip={}, device=CPU)
    assert len({short.identity(), default.identity(), without.identity()}) == 3
    assert short.caption_token_counts(["a photo of a cat"]) == ([5], 15), "T5 closes each text with </s>"
    assert without.caption_token_counts(["a photo of a cat"])[1] == 75, "CLIP's limit without T5"


def test_denoise_is_the_pipelines_transformer_call() -> None:
    model = _model()
    conditioning = Sd3Hooks().conditioner(model, layer_skip={}, device=CPU).encode(CAPTIONS[:1])
    prompt, pooled = assemble(model, conditioning, CPU, torch.float32)
    noisy, timestep = _noisy(), torch.tensor([700.0])
    with torch.no_grad():
        ours = Sd3Hooks().denoise(model, noisy, timestep, conditioning, {})
        theirs = model.transformer(
            hidden_states=noisy,
            timestep=timestep,
            encoder_hidden_states=prompt,
            pooled_projections=pooled,
            return_dict=False,
        )[0]
    assert torch.equal(ours, theirs)


def test_training_defaults_are_sd3s_shift_3_and_logit_normal() -> None:
    setup = _setup(method="lora", lora={"rank": 2})
    assert setup.config.noise.timesteps.distribution.value == "logit-normal"
    assert setup.objective.shift == 3.0
    assert not setup.objective.dynamic
    uniform = _setup(method="lora", lora={"rank": 2}, noise={"timesteps": {"distribution": "uniform"}})
    assert uniform.config.noise.timesteps.distribution.value == "uniform", "the default is only a default"


@pytest.mark.parametrize("t5", [True, False])
def test_a_training_step_predicts_the_flow_matching_target(t5: bool) -> None:
    setup = _setup(method="lora", lora={"rank": 2}, model={"options": {} if t5 else {"t5": False}})
    assert ("text_encoder_3" in setup.model.components) == t5
    latents = _noisy(2)
    batch = {"latents": latents, "captions": CAPTIONS}
    out = setup.predict(batch, torch.Generator().manual_seed(5))
    noise = torch.randn(latents.shape, generator=torch.Generator().manual_seed(5))
    assert out["prediction"].shape == out["target"].shape == (2, 16, 8, 6)
    torch.testing.assert_close(out["target"], noise - latents)
    loss = setup.loss(out, batch)
    loss.backward()
    assert torch.isfinite(loss)
    grads = [p.grad for p in setup.trainables.parameters("transformer")]
    assert any(grad is not None and grad.abs().sum() > 0 for grad in grads)


def test_t5_cannot_train_on_a_model_whose_source_holds_none() -> None:
    """`model.options.t5: false` is refused by the config's validation; a source without T5 (a folder whose
    `model_index.json` has no `text_encoder_3`) is found out only once loaded, by the setup."""
    settings = validate(
        {"model": {"type": "sd35-large", "base": "tiny:sd35-large"}, "parts": {"text_encoder_3": {"train": True}}},
        check_paths=False,
    )
    with pytest.raises(UserError, match="has no T5") as error:
        lookup(ModuleKind.SETUP, "sd35-large")(_model(t5=False), settings)
    assert error.value.where == "parts.text_encoder_3.train"


def test_dropout_zeroes_each_encoders_conditioning_on_its_own(
    denoised_conditioning: Callable[..., dict[str, torch.Tensor]],
) -> None:
    """As the SD 3 paper trains: each encoder's conditioning is dropped independently (here T5 always, CLIP-L
    never), by zeroing that encoder's tensors before they are joined."""
    setup = _setup(method="lora", lora={"rank": 2}, parts={"text_encoder_3": {"dropout": 1.0}})
    seen = denoised_conditioning(setup)
    setup.train()
    batch = {"latents": _noisy(2), "captions": CAPTIONS}
    setup.predict(batch, torch.Generator().manual_seed(0))
    assert seen[T5_HIDDEN].abs().sum() == 0
    assert seen[L_HIDDEN].abs().sum() > 0
    assert seen[G_POOLED].abs().sum() > 0
    assert seen[L_POOLED].abs().sum() > 0


def test_an_embedding_conditions_all_three_encoders_and_trains_on_each() -> None:
    model = _model()
    model.adapters.embeddings.append(add_embedding(model, "<shape>", count=2, init_text="circle"))
    outputs = Sd3Hooks().conditioner(model, layer_skip={}, device=CPU).encode_for_training(["a <shape> on a square"])
    sum(outputs[key].pow(2).sum() for key in (L_HIDDEN, G_HIDDEN, T5_HIDDEN)).backward()
    embedding = model.adapters.embeddings[0]
    assert set(embedding.parameters) == {"text_encoder", "text_encoder_2", "text_encoder_3"}
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in embedding.parameters.values())


def test_an_embedding_without_t5_vectors_reaches_t5_as_plain_text() -> None:
    """A file trained with `t5: false` holds clip_l + clip_g; on a model with T5 the placeholder is text there,
    written as the caption has it (not expanded to its n tokens), as ComfyUI's T5 reads it."""
    model, plain = _model(), _model()
    vectors = {"text_encoder": torch.randn(2, 32), "text_encoder_2": torch.randn(2, 48)}
    model.adapters.embeddings.append(add_embedding(model, "<shape>", vectors=vectors, trainable=False))
    assert set(model.adapters.embeddings[0].token_ids) == {"text_encoder", "text_encoder_2"}
    assert "<shape>" not in model.tokenizer_3.get_vocab()
    conditioner = Sd3Hooks().conditioner(model, layer_skip={}, device=CPU)
    outputs = conditioner.encode(["a <shape> on a square"])
    expected = Sd3Hooks().conditioner(plain, layer_skip={}, device=CPU).encode(["a <shape> on a square"])
    assert torch.equal(outputs[T5_HIDDEN], expected[T5_HIDDEN])
    assert not torch.equal(outputs[L_HIDDEN], expected[L_HIDDEN])
    assert conditioner.caption_token_counts(["<shape>"])[0] == [len(plain.tokenizer_3("<shape>").input_ids) - 1]


@pytest.mark.parametrize(("preset", "count"), [("attn", 8 + 6), ("attn-mlp", 12 + 8), ("full", 14 + 10)])
def test_transformer_presets_adapt_attention_then_mlp_then_modulation(preset: str, count: int) -> None:
    """Per block: both streams' q, k, v, out (8), their MLPs (4), their modulations (2). The last block's text
    stream only modulates: it has no output projection or MLP, and its query, unused, is not adapted."""
    setup = _setup(method="lora", lora={"rank": 2, "targets": preset})
    adapted = {name.split(".lora_A")[0] for name, _ in setup.model.transformer.named_parameters() if ".lora_A." in name}
    assert len(adapted) == count
    assert "transformer_blocks.1.attn.add_q_proj" not in adapted


@pytest.mark.parametrize(("t5", "layout", "axis"), [(True, "kohya", "input"), (False, "peft", "output")])
def test_a_dora_trains_on_the_axis_of_the_layout_auto_saves(tmp_path: Path, t5: bool, layout: str, axis: str) -> None:
    """`auto` saves a LoRA that trains T5 as kohya (ComfyUI reads T5 only there), so its DoRA learns kohya's
    per-column magnitudes, and the file is written without refusal; otherwise peft's, per row."""
    from safetensors.torch import load_file

    from onetrainer.model_saver.diffusion import DiffusionSaver
    from onetrainer.util.detect import detect_path
    from onetrainer.util.enums import TrainingMethod

    parts = {"text_encoder_3": {"train": True}} if t5 else {}
    setup = _setup(method="lora", lora={"rank": 2, "type": "dora"}, parts=parts)
    assert setup.lora is not None
    assert setup.lora.dora_axis == axis
    (path,) = DiffusionSaver().save(setup.model, tmp_path / "dora.safetensors", method=TrainingMethod.LORA)
    assert detect_path(path).layout == layout
    assert any(key.startswith(("lora_te3_", "text_encoder_3.")) for key in load_file(path)) == t5


def test_the_memory_estimate_leaves_out_what_the_options_leave_out() -> None:
    """Uncached, T5 runs during the steps: its weights count, unless `model.options.t5: false` leaves it out."""
    from onetrainer.model_setup.estimate import estimate_memory

    def weights(options: dict[str, Any]) -> dict[str, int]:
        config = validate(
            {
                "model": {"type": "sd35-medium", "base": "tiny:sd35-medium", "options": options},
                "data": {"cache": False, "resolution": 64},
            },
            check_paths=False,
        )
        return {line.what.split()[0]: line.bytes for line in estimate_memory(config).gpu if line.kind == "weights"}

    with_t5, without = weights({}), weights({"t5": False})
    assert with_t5["text_encoder_3"] > 0
    assert "text_encoder_3" not in without
    assert without == {name: size for name, size in with_t5.items() if name != "text_encoder_3"}
