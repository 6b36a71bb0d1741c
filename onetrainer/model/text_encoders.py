"""The CLIP text encoders several families share, declared once: the same weights, tokenizer, kohya
prefix and embedding key wherever a pipeline names them `text_encoder` (CLIP ViT-L) and
`text_encoder_2` (OpenCLIP ViT-bigG)."""

from __future__ import annotations

from onetrainer.model.adapters.targets import CLIP_PRESETS
from onetrainer.util.family import Component, Role

OPENCLIP_FUSED_ATTENTION = tuple(f"self_attn.{name}" for name in ("q_proj", "k_proj", "v_proj", "out_proj"))
"""The attention layers A1111 fuses into one MultiheadAttention in OpenCLIP text encoders
(`Component.lora_all_or_none`)."""

CLIP_L = Component(
    "text_encoder",
    Role.TEXT_ENCODER,
    "CLIP ViT-L text encoder",
    tokenizer="tokenizer",
    kohya_prefix="lora_te1_",
    embedding_key="clip_l",
    lora_presets=CLIP_PRESETS,
)
CLIP_G = Component(
    "text_encoder_2",
    Role.TEXT_ENCODER,
    "OpenCLIP ViT-bigG text encoder",
    tokenizer="tokenizer_2",
    kohya_prefix="lora_te2_",
    embedding_key="clip_g",
    lora_presets=CLIP_PRESETS,
    pad_token="!",
)
"""bigG pads its captions with "!" (its tokenizer's pad token is not its end token)."""

T5_EMBEDDING_KEYS = ("t5xxl", "t5")
"""The keys of T5-XXL's vectors in embedding files: ours (sd-scripts' name), then OneTrainer's (read, never
written). The families that use T5 name its component differently, so only its embedding keys are shared."""
