"""Prompt encoding shared by training and sampling: padding, clip skip, and how long a caption is."""

from __future__ import annotations

import torch

from onetrainer.model.clip_text import caption_token_counts, encode_tokens, tokenize
from onetrainer.model_loader.pipeline import load_model


def test_tokens_are_padded_to_the_context_length() -> None:
    model = load_model("tiny:sd15")
    ids = tokenize(model.tokenizer, ["a cat", "a " * 100])
    assert ids.shape == (2, 77)
    length = len(model.tokenizer("a cat").input_ids)
    assert ids[0, 0].item() == model.tokenizer.bos_token_id
    assert ids[0, length - 1 :].tolist() == [model.tokenizer.eos_token_id] * (77 - length + 1)
    assert ids[1, -1].item() == model.tokenizer.eos_token_id  # truncated, still ends the sequence


def test_an_earlier_layer_passes_the_final_norm_unless_told_not_to() -> None:
    model = load_model("tiny:sd15")
    ids = tokenize(model.tokenizer, ["a red circle"])
    with torch.no_grad():
        outputs = model.text_encoder(ids, output_hidden_states=True)
        last = encode_tokens(model.text_encoder, ids, 1)
        penultimate = encode_tokens(model.text_encoder, ids, 2)
        raw = encode_tokens(model.text_encoder, ids, 2, final_norm=False)
        norm = getattr(model.text_encoder, "text_model", model.text_encoder).final_layer_norm
        assert torch.equal(last, outputs.last_hidden_state)
        assert torch.allclose(penultimate, norm(outputs.hidden_states[-2]), atol=1e-6)
        assert torch.equal(raw, outputs.hidden_states[-2])
        assert not torch.allclose(penultimate, last)


def test_caption_token_counts_leave_out_start_and_end_and_show_what_is_cut() -> None:
    model = load_model("tiny:sd15")
    counts, limit = caption_token_counts(model.tokenizer, ["a cat", "a " * 80, ""])
    assert limit == 75
    assert counts == [len(model.tokenizer("a cat").input_ids) - 2, 80, 0]
    assert caption_token_counts(model.tokenizer, []) == ([], 75)
