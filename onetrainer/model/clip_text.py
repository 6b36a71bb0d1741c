"""Prompt to CLIP hidden states, the one way training and sampling both do it.

Training and previews must condition the denoiser identically (same tokenization, same embedding
expansion, same layer), or a preview would not show what was trained; so both call this. Layers count
from the end: 1 is the last layer, 2 the penultimate (A1111's "clip skip"). Families differ in which
layer they read by default and whether it passes the final layer norm (the original 1.x/2.x code
normalises a skipped layer; later families read the penultimate layer as it is), so both are arguments.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

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


def encode_tokens(
    text_encoder: CLIPTextModel | CLIPTextModelWithProjection,
    input_ids: torch.Tensor,
    layer: int = 1,
    *,
    final_norm: bool = True,
) -> torch.Tensor:
    """[B, 77, width] hidden states of the `layer`-th layer from the end (after the final layer norm if
    `final_norm`; the last layer always has it)."""
    return clip_outputs(text_encoder, input_ids, layer, final_norm=final_norm)[0]


def clip_outputs(
    text_encoder: CLIPTextModel | CLIPTextModelWithProjection,
    input_ids: torch.Tensor,
    layer: int = 1,
    *,
    final_norm: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(hidden states of `layer` from the end, the model's pooled output: `text_embeds` of a model with a
    projection, else `pooler_output`)."""
    device = next(text_encoder.parameters()).device
    # Without blocking: inside a training step (a text encoder that trains) a blocking copy waits for the GPU.
    outputs = text_encoder(input_ids.to(device, non_blocking=True), output_hidden_states=layer > 1)
    pooled = getattr(outputs, "text_embeds", None)
    if pooled is None:
        pooled = outputs.pooler_output
    if layer <= 1:
        return outputs.last_hidden_state, pooled
    hidden = outputs.hidden_states[-layer]
    if final_norm:
        hidden = getattr(text_encoder, "text_model", text_encoder).final_layer_norm(hidden)
    return hidden, pooled
