"""Textual-inversion embeddings: tokens, vectors, the lookup in front of the token table, files."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from onetrainer.model.adapters import add_embedding, read_embedding_file
from onetrainer.model.adapters.embedding import expand_placeholders
from onetrainer.model.clip_text import encode_tokens, tokenize
from onetrainer.model.diffusion import DiffusionModel
from onetrainer.model_loader.pipeline import load_model
from onetrainer.util.atomic import save_safetensors
from onetrainer.util.errors import UserError
from onetrainer.util.family import get_family


@pytest.fixture
def model() -> DiffusionModel:
    return load_model("tiny:sd15")


def test_placeholder_gets_one_token_per_vector(model: DiffusionModel) -> None:
    before = len(model.tokenizer)
    embedding = add_embedding(model, "<Cat>", count=3, init_text="cat")
    assert embedding.tokens == ["<Cat>", "<Cat>_1", "<Cat>_2"]
    assert embedding.count == 3
    assert embedding.token_ids == {"text_encoder": [before, before + 1, before + 2]}
    assert {encoder: tuple(v.shape) for encoder, v in embedding.vectors().items()} == {"text_encoder": (3, 32)}
    assert list(embedding.named_parameters()) == ["<Cat>/text_encoder"]
    ids = tokenize(model.tokenizer, ["a photo of <Cat>"], [embedding])[0].tolist()
    assert ids[4:7] == embedding.token_ids["text_encoder"]  # bos, a, photo, of, then the three vectors (case kept)


def test_vectors_start_from_the_init_text_stretched_as_a1111_does(model: DiffusionModel) -> None:
    table = model.text_encoder.get_input_embeddings().weight
    red, end = model.tokenizer("red", add_special_tokens=False).input_ids[0], model.tokenizer.eos_token_id
    stretched = add_embedding(model, "<x>", count=5, init_text="red<|endoftext|>")
    assert torch.equal(stretched.vectors()["text_encoder"], table[[red, red, red, end, end]].detach())
    a, _, of, _ = model.tokenizer("a photo of red", add_special_tokens=False).input_ids
    thinned = add_embedding(model, "<y>", count=2, init_text="a photo of red")
    assert torch.equal(thinned.vectors()["text_encoder"], table[[a, of]].detach())


def test_lookup_uses_vectors_for_new_tokens_and_the_table_for_the_rest(model: DiffusionModel) -> None:
    table = model.text_encoder.get_input_embeddings().weight.detach().clone()
    vectors = torch.randn(2, 32)
    embedding = add_embedding(model, "<x>", vectors={"text_encoder": vectors})
    lookup = model.text_encoder.get_input_embeddings()
    token_ids = embedding.token_ids["text_encoder"]
    out = lookup(torch.tensor([[5, token_ids[1], 7, token_ids[0]]]))
    assert torch.equal(out[0, 0], table[5])
    assert torch.equal(out[0, 2], table[7])
    assert torch.allclose(out[0, 1], vectors[1])
    assert torch.allclose(out[0, 3], vectors[0])


def test_text_encoder_state_dict_is_unchanged(model: DiffusionModel) -> None:
    before = {key: tensor.shape for key, tensor in model.text_encoder.state_dict().items()}
    add_embedding(model, "<x>", count=2)
    after = {key: tensor.shape for key, tensor in model.text_encoder.state_dict().items()}
    assert before == after


def test_only_the_embedding_receives_gradients(model: DiffusionModel) -> None:
    model.text_encoder.requires_grad_(False)
    embedding = add_embedding(model, "<x>", count=2)
    ids = tokenize(model.tokenizer, ["a <x> photo"], [embedding])
    encode_tokens(model.text_encoder, ids).sum().backward()
    parameter = embedding.parameters["text_encoder"]
    assert parameter.grad is not None
    assert parameter.grad.abs().sum() > 0
    assert all(param.grad is None for param in model.text_encoder.parameters())


def test_multi_vector_placeholders_are_expanded_longest_first(model: DiffusionModel) -> None:
    short = add_embedding(model, "<a>", count=2)
    long = add_embedding(model, "<a>b", count=1)
    assert expand_placeholders("x <a> <a>b", [short, long]) == "x <a> <a>_1 <a>b"


def test_duplicate_placeholder_and_wrong_width_are_refused(model: DiffusionModel) -> None:
    add_embedding(model, "<x>")
    with pytest.raises(UserError, match="already has a token"):
        add_embedding(model, "<x>")
    with pytest.raises(UserError, match=r"needs \[n, 32\]"):
        add_embedding(model, "<y>", vectors={"text_encoder": torch.zeros(2, 768)})
    with pytest.raises(UserError, match="needs the same number of vectors for each of text_encoder"):
        add_embedding(model, "<w>", vectors={"text_encoder_2": torch.zeros(2, 32)})
    with pytest.raises(UserError, match="no tokens"):
        add_embedding(model, "<z>", init_text="")


@pytest.mark.parametrize("placeholder", ["cat", "<|endoftext|>"])
def test_a_placeholder_already_in_the_vocabulary_is_refused(model: DiffusionModel, placeholder: str) -> None:
    """It would take the vocabulary entry's id: `cat` is a BPE piece, so the embedding would fire inside
    "catalog" too. The refusal changes no tokenizer."""
    assert placeholder in model.tokenizer.get_vocab()
    before = len(model.tokenizer)
    with pytest.raises(UserError, match="already in the vocabulary of the text_encoder tokenizer") as caught:
        add_embedding(model, placeholder, vectors={"text_encoder": torch.zeros(1, 32)}, where="embedding.placeholder")
    assert caught.value.where == "embedding.placeholder"
    assert "angle brackets" in str(caught.value.hint)
    assert len(model.tokenizer) == before


def test_a_placeholder_whose_extra_token_is_in_the_vocabulary_is_refused(model: DiffusionModel) -> None:
    model.tokenizer.add_special_tokens({"additional_special_tokens": ["<x>_1"]})
    with pytest.raises(UserError, match=r"\(as its token '<x>_1'\)"):
        add_embedding(model, "<x>", count=2)


def test_reads_a1111_diffusers_and_legacy_pickle_files(tmp_path: Path) -> None:
    vectors = torch.randn(2, 32)
    save_safetensors({"emb_params": vectors}, tmp_path / "a.safetensors")
    save_safetensors({"<tok>": vectors}, tmp_path / "d.safetensors")
    torch.save({"string_to_param": {"*": vectors}, "name": "old"}, tmp_path / "legacy.pt")
    for name in ("a.safetensors", "d.safetensors", "legacy.pt"):
        assert read_embedding_file(tmp_path / name, get_family("sd15")).keys() == {"text_encoder"}
        assert torch.equal(read_embedding_file(tmp_path / name, get_family("sd15"))["text_encoder"], vectors)


def test_an_embedding_of_another_family_is_refused(tmp_path: Path) -> None:
    save_safetensors({"emb_params": torch.zeros(1, 1024)}, tmp_path / "sd2.safetensors")
    with pytest.raises(UserError, match=r"for SD 2\.x \(vector width 1024\), not for this SD 1\.x model"):
        read_embedding_file(tmp_path / "sd2.safetensors", get_family("sd15"))
    save_safetensors({"clip_l": torch.zeros(1, 768), "clip_g": torch.zeros(1, 1280)}, tmp_path / "xl.safetensors")
    with pytest.raises(UserError, match=r"for SDXL \(clip_l and clip_g vectors\), not for this SD 1\.x model"):
        read_embedding_file(tmp_path / "xl.safetensors", get_family("sd15"))
    save_safetensors({"clip_l": torch.zeros(1, 768), "t5xxl": torch.zeros(1, 4096)}, tmp_path / "flux.safetensors")
    with pytest.raises(
        UserError, match=r"for FLUX\.1-dev/FLUX\.1-schnell \(clip_l and t5xxl vectors\), not for this SD 1\.x model"
    ):
        read_embedding_file(tmp_path / "flux.safetensors", get_family("sd15"))
    # CLIP-L and a made-up encoder's vectors: an embedding of no family.
    save_safetensors({"clip_l": torch.zeros(1, 768), "zeta_te": torch.zeros(1, 4096)}, tmp_path / "zeta.safetensors")
    with pytest.raises(UserError, match="not a model, LoRA or embedding this tool knows"):
        read_embedding_file(tmp_path / "zeta.safetensors", get_family("sd15"))


@pytest.mark.parametrize(("kind", "encoder"), [("sdxl", "text_encoder_2"), ("flux-dev", "text_encoder")])
def test_pooled_vectors_are_read_at_the_end_token_not_at_a_placeholder(kind: str, encoder: str) -> None:
    """The released CLIP configs' `eos_token_id` is 2 (so are the tiny ones'): transformers would pool at the
    largest id, which a placeholder's is."""
    from onetrainer.model.clip_text import clip_outputs

    base = load_model(f"tiny:{kind}")
    text_encoder, tokenizer = base.components[encoder], base.tokenizer_for(encoder)
    assert text_encoder.config.eos_token_id == 2
    embedding = add_embedding(base, "<shape>", count=2, init_text="circle")
    base.adapters.embeddings.append(embedding)
    ids = tokenize(tokenizer, ["a <shape> on a square"], [embedding])
    end = int((ids[0] == tokenizer.eos_token_id).nonzero()[0])
    assert int(ids[0].argmax()) != end  # a placeholder's id is the largest
    with torch.no_grad():
        hidden, pooled = clip_outputs(text_encoder, ids)
        at_end = hidden[0, end]
        projection = getattr(text_encoder, "text_projection", None)
        expected = projection(at_end) if projection is not None else at_end
    torch.testing.assert_close(pooled[0], expected)
