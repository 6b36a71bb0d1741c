"""Prompt to CLIP hidden states, the one way training and sampling both do it.

Training and previews must condition the UNet identically (same tokenization, same embedding
expansion, same clip skip), or a preview would not show what was trained; so both call this.
Clip skip counts as A1111 and kohya do: 1 is the last layer, 2 the penultimate, and the skipped
output still passes the final layer norm, as the original SD code does.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch
    from transformers import CLIPTokenizer

    from onetrainer.model.adapters.embedding import EmbeddingAdapter


def tokenize(
    tokenizer: CLIPTokenizer, texts: list[str], embeddings: list[EmbeddingAdapter] | None = None
) -> torch.Tensor:
    """[B, 77] token ids, padded and truncated to the tokenizer's context; placeholders expanded."""
    from onetrainer.model.adapters.embedding import expand_placeholders

    expanded = [expand_placeholders(text, embeddings or []) for text in texts]
    return tokenizer(
        expanded,
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids


def caption_token_counts(
    tokenizer: CLIPTokenizer, texts: list[str], embeddings: list[EmbeddingAdapter] | None = None
) -> tuple[list[int], int]:
    """(tokens each text holds, how many the text encoder reads): beyond that, `tokenize` cuts.

    Both counts leave out the start and end tokens, so the limit is 75 for CLIP's 77-token context,
    the number kohya and A1111 users know.
    """
    from onetrainer.model.adapters.embedding import expand_placeholders

    expanded = [expand_placeholders(text, embeddings or []) for text in texts]
    ids = tokenizer(expanded, add_special_tokens=False, truncation=False, verbose=False).input_ids if expanded else []
    return [len(row) for row in ids], tokenizer.model_max_length - 2


def encode_tokens(text_encoder: torch.nn.Module, input_ids: torch.Tensor, clip_skip: int = 1) -> torch.Tensor:
    """[B, 77, width] hidden states of the layer `clip_skip` from the end, after the final layer norm."""
    input_ids = input_ids.to(text_encoder.device)
    if clip_skip <= 1:
        return text_encoder(input_ids).last_hidden_state
    hidden = text_encoder(input_ids, output_hidden_states=True).hidden_states[-clip_skip]
    return getattr(text_encoder, "text_model", text_encoder).final_layer_norm(hidden)
