"""Facts about the installed transformers' CLIP classes that key layouts depend on."""

from __future__ import annotations

import functools


@functools.lru_cache(maxsize=2)
def clip_text_model_is_wrapped(with_projection: bool = False) -> bool:
    """Whether the installed transformers' CLIP text model keys start with `text_model.`.

    transformers >= 5.6 flattened CLIPTextModel, so its state dict says `encoder.layers.0...`; older
    versions, and CLIPTextModelWithProjection (a projected encoder, such as a second CLIP-G encoder) in all
    versions, say
    `text_model.encoder.layers.0...`. Checked on a 1-layer model, once per process.
    """
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(
        vocab_size=8,
        hidden_size=4,
        intermediate_size=4,
        projection_dim=4,
        num_hidden_layers=1,
        num_attention_heads=1,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
    )
    model = (CLIPTextModelWithProjection if with_projection else CLIPTextModel)(config)
    return any(key.startswith("text_model.") for key in model.state_dict())
