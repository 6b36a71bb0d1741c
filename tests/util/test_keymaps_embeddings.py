from __future__ import annotations

from pathlib import Path

import pytest
import torch

from onetrainer.util.atomic import save_safetensors
from onetrainer.util.family import FamilySpec, get_family
from onetrainer.util.keymaps.embeddings import a1111_to_embedding, embedding_to_a1111, embedding_to_diffusers
from onetrainer.util.keymaps.engine import KeyMapError
from onetrainer.util.tiny.models import build_tiny_sd15_pipeline

VECTORS = torch.randn(3, 32, generator=torch.Generator().manual_seed(0))


def test_diffusers_loads_our_a1111_file_into_the_right_rows(tmp_path: Path) -> None:
    path = tmp_path / "mytoken.safetensors"
    save_safetensors(embedding_to_a1111({"text_encoder": VECTORS}, get_family("sd15")), path)
    pipe = build_tiny_sd15_pipeline()
    pipe.load_textual_inversion(str(path), token="<mytoken>")
    # diffusers gives an n-vector embedding the tokens <t>, <t>_1, <t>_2 ...
    ids = pipe.tokenizer.convert_tokens_to_ids(["<mytoken>", "<mytoken>_1", "<mytoken>_2"])
    rows = pipe.text_encoder.get_input_embeddings().weight[ids]
    assert torch.equal(rows.detach(), VECTORS)


@pytest.mark.parametrize("family", ["sd15", "sd2"])
def test_sd_embeddings_use_emb_params(family: str) -> None:
    sd = embedding_to_a1111({"text_encoder": VECTORS}, get_family(family))
    assert list(sd) == ["emb_params"]
    assert torch.equal(a1111_to_embedding(sd, get_family(family))["text_encoder"], VECTORS)


def test_two_encoder_embeddings_hold_one_tensor_per_encoder(fake_family: FamilySpec) -> None:
    """The keys are the spec's `embedding_key`s (sd-scripts' `clip_l` / `clip_g` for such a family)."""
    wide = torch.randn(3, 64)
    sd = embedding_to_a1111({"text_encoder": VECTORS, "text_encoder_2": wide}, fake_family)
    assert sd.keys() == {"te_a", "te_b"}
    back = a1111_to_embedding(sd, fake_family)
    assert torch.equal(back["text_encoder"], VECTORS)
    assert torch.equal(back["text_encoder_2"], wide)


def test_two_encoder_embedding_needs_both_encoders(fake_family: FamilySpec) -> None:
    with pytest.raises(KeyMapError, match="text_encoder_2"):
        embedding_to_a1111({"text_encoder": VECTORS}, fake_family)
    with pytest.raises(KeyMapError, match="not a Test DiT embedding"):
        a1111_to_embedding({"te_a": VECTORS}, fake_family)


@pytest.mark.parametrize(
    "layout",
    [
        {"string_to_param": {"*": VECTORS}, "name": "x", "step": 10},  # legacy A1111 .pt
        embedding_to_diffusers(VECTORS, "<x>"),  # diffusers learned_embeds
        {"whatever": VECTORS},  # any single-tensor file
    ],
)
def test_other_layouts_are_read(layout: dict) -> None:
    assert torch.equal(a1111_to_embedding(layout, get_family("sd15"))["text_encoder"], VECTORS)


def test_a_single_vector_becomes_a_one_row_matrix() -> None:
    assert a1111_to_embedding({"emb_params": VECTORS[0]}, get_family("sd2"))["text_encoder"].shape == (1, 32)


def test_ambiguous_files_are_refused() -> None:
    with pytest.raises(KeyMapError, match=r"not a SD 1\.x embedding"):
        a1111_to_embedding({"a": VECTORS, "b": VECTORS}, get_family("sd15"))
