"""Embedding files: a1111 and diffusers round trips, and diffusers' `load_textual_inversion` on them."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from onetrainer.model.adapters.embedding import add_embedding, expand_placeholders, read_embedding_file
from onetrainer.model_loader.pipeline import load_model
from onetrainer.model_saver.diffusion import DiffusionSaver
from onetrainer.util.enums import TrainingMethod
from onetrainer.util.family import get_family

PLACEHOLDER = "<my-cat>"
SD15 = get_family("sd15")


def _equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[encoder], b[encoder]) for encoder in a)


def _embedded_model(tiny_sd15_dir: Path, count: int = 2):
    model = load_model(tiny_sd15_dir)
    vectors = torch.randn(count, 32, generator=torch.Generator().manual_seed(3))
    embedding = add_embedding(model, PLACEHOLDER, vectors={"text_encoder": vectors})
    model.adapters.embeddings = [embedding]
    return model, embedding


def _save(model, path: Path, fmt: str) -> list[Path]:
    return DiffusionSaver().save(model, path, method=TrainingMethod.EMBEDDING, format=fmt, dtype="fp32")


@pytest.mark.parametrize(("fmt", "key"), [("a1111", "emb_params"), ("diffusers", PLACEHOLDER)])
def test_round_trip_gives_identical_vectors(tiny_sd15_dir: Path, tmp_path: Path, fmt: str, key: str) -> None:
    model, embedding = _embedded_model(tiny_sd15_dir)
    (path,) = _save(model, tmp_path / "my-cat.safetensors", fmt)
    with safe_open(str(path), "pt") as handle:
        assert list(handle.keys()) == [key]
        metadata = handle.metadata()
    assert _equal(read_embedding_file(path, SD15), embedding.vectors())
    assert metadata["modelspec.architecture"] == "stable-diffusion-v1/textual-inversion"
    assert metadata["modelspec.trigger_phrase"] == PLACEHOLDER


@pytest.mark.parametrize("fmt", ["a1111", "diffusers"])
def test_diffusers_load_textual_inversion_encodes_like_our_model(tiny_sd15_dir: Path, tmp_path: Path, fmt: str) -> None:
    from diffusers import StableDiffusionPipeline

    model, embedding = _embedded_model(tiny_sd15_dir)
    (path,) = _save(model, tmp_path / "my-cat.safetensors", fmt)
    pipe = StableDiffusionPipeline.from_pretrained(tiny_sd15_dir, safety_checker=None, feature_extractor=None)
    pipe.load_textual_inversion(str(path), token=PLACEHOLDER)
    prompt = expand_placeholders(f"a photo of {PLACEHOLDER}", [embedding])
    ours_ids = model.tokenizer(prompt, padding="max_length", max_length=77, return_tensors="pt").input_ids
    theirs_ids = pipe.tokenizer(prompt, padding="max_length", max_length=77, return_tensors="pt").input_ids
    with torch.no_grad():
        ours, theirs = model.text_encoder(ours_ids)[0], pipe.text_encoder(theirs_ids)[0]
        plain = model.text_encoder(
            model.tokenizer("a photo of", padding="max_length", max_length=77, return_tensors="pt").input_ids
        )[0]
    assert not torch.allclose(ours, plain)
    torch.testing.assert_close(theirs, ours, rtol=0, atol=1e-6)


def test_extra_embeddings_are_written_beside_a_lora(tiny_sd15_dir: Path, tmp_path: Path) -> None:
    from onetrainer.model.adapters.lora import LoraTargets, inject_lora

    model, embedding = _embedded_model(tiny_sd15_dir, count=1)
    targets = {"unet": LoraTargets(presets=SD15.component("unet").lora_presets)}
    model.adapters.lora = inject_lora(model, kind="lora", rank=2, alpha=2, targets=targets)
    written = DiffusionSaver().save(model, tmp_path / "out" / "style.safetensors", method=TrainingMethod.LORA)
    assert written == [tmp_path / "out" / "style.safetensors", tmp_path / "out" / "embeddings" / "my-cat.safetensors"]
    half = {encoder: vectors.half().float() for encoder, vectors in embedding.vectors().items()}
    assert _equal(read_embedding_file(written[1], SD15), half)


def test_full_save_keeps_embeddings_out_of_the_pipeline(tiny_sd15_dir: Path, tmp_path: Path) -> None:
    model, embedding = _embedded_model(tiny_sd15_dir)
    written = DiffusionSaver().save(model, tmp_path / "pipeline", method=TrainingMethod.FULL, dtype=None)
    assert written == [tmp_path / "pipeline", tmp_path / "embeddings" / "my-cat.safetensors"]
    reloaded = load_model(written[0])
    assert len(reloaded.tokenizer) == reloaded.text_encoder.get_input_embeddings().num_embeddings == 1514
    assert _equal(read_embedding_file(written[1], SD15), embedding.vectors())


def test_full_save_drops_the_placeholders_inside_a_larger_table(tmp_path: Path) -> None:
    """T5-XXL's table has spare rows past its tokenizer, where the first added tokens land: the id rule alone
    kept them, mapping the placeholder to an untrained row of the saved model."""
    from transformers import AutoTokenizer

    from onetrainer.model.diffusion import DiffusionModel
    from onetrainer.util.tiny.models import build_tiny_flux_pipeline

    pipe = build_tiny_flux_pipeline(0)
    pipe.text_encoder_2.resize_token_embeddings(len(pipe.tokenizer_2) + 28, mean_resizing=False)
    model = DiffusionModel.from_pipeline(pipe, get_family("flux-dev"), source="tiny")
    embedding = add_embedding(model, "<p>", count=2, init_text="a")
    model.adapters.embeddings = [embedding]
    assert embedding.token_ids["text_encoder_2"][-1] < pipe.text_encoder_2.config.vocab_size
    (folder, _) = DiffusionSaver().save(model, tmp_path / "pipeline", method=TrainingMethod.FULL, dtype=None)
    for name in ("tokenizer", "tokenizer_2"):
        saved = AutoTokenizer.from_pretrained(folder / name)
        assert not set(embedding.tokens) & set(saved.get_vocab()), name
        assert len(saved) == len(model.tokenizers[name]) - 2
