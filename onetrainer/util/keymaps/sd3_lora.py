"""kohya LoRA names of SD 3 / 3.5: diffusers' module paths, which ComfyUI maps onto its MMDiT.

A kohya-layout SD 3 LoRA names each adapted module by its component's prefix and its diffusers /
transformers path with every "." written "_" (OneTrainer's SD 3 layout):
- `lora_transformer_` + the `SD3Transformer2DModel` path: `lora_transformer_transformer_blocks_0_attn_to_q`,
  `..._attn_add_k_proj`, `..._attn2_to_v` (3.5 Medium), `..._ff_context_net_0_proj`, `..._norm1_context_linear`;
- `lora_te1_` CLIP-L and `lora_te2_` OpenCLIP bigG, transformers' CLIP paths with `text_model_`
  (`lora_te1_text_model_encoder_layers_0_self_attn_q_proj`); `lora_te3_` T5-XXL
  (`lora_te3_encoder_block_0_layer_0_SelfAttention_q`).
The peft layout holds the same modules as `transformer.<path>.lora_A.weight`, `text_encoder.<path>...`
(diffusers' `StableDiffusion3Pipeline.load_lora_weights` reads it, for the transformer and both CLIP encoders).

ComfyUI (comfy/lora.py, `model_lora_keys_unet` and `model_lora_keys_clip`) loads both layouts:
- for an SD 3 model it builds `comfy.utils.mmdit_to_diffusers` (diffusers path -> MMDiT key) and maps
  `transformer.<path>` and `lora_transformer_<path with "_">` of every `.weight` in it: to_q / to_k / to_v
  (and add_*_proj, attn2's) to their row slices of the fused `attn.qkv` (`context_block.attn.qkv`,
  `x_block.attn2.qkv`), every other block layer one to one (`attn.to_out.0` -> `x_block.attn.proj`,
  `attn.to_add_out` -> `context_block.attn.proj`, `ff.net.0.proj` -> `x_block.mlp.fc1`, `norm1.linear` ->
  `x_block.adaLN_modulation.1`, ...), and the last block's `norm1_context.linear` with its halves swapped;
- for CLIP-L and bigG it maps `lora_te1_text_model_encoder_layers_N_<layer>` / `lora_te2_...` (self_attn
  q/k/v/out_proj, mlp fc1/fc2) and `text_encoder.` / `text_encoder_2.` + the transformers path; for T5,
  `lora_te3_` + its path (the third encoder when CLIP-L and bigG are present). Neither ComfyUI nor diffusers
  reads T5 under peft's `text_encoder_3.` keys: a LoRA that trains T5 is for ComfyUI saved as kohya.
So every LoRA target of the family's presets (`model.sd3`) has a name ComfyUI maps to a real module;
`tests/util/test_keymaps_sd3.py` checks every written key under these rules.
"""

from __future__ import annotations

from onetrainer.util.keymaps.kohya_names import T5_COMPOUND_NAMES, UNET_CLIP_COMPOUND_NAMES, DottedKohyaNaming

MMDIT_COMPOUND_NAMES = frozenset(
    {
        "transformer_blocks", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out", "norm1_context",
        "ff_context", "norm_q", "norm_k", "norm_added_q", "norm_added_k", "context_embedder", "pos_embed",
        "time_text_embed", "timestep_embedder", "text_embedder", "norm_out",
    }
)  # fmt: skip
"""Identifiers with "_" in diffusers' SD3Transformer2DModel (beyond the UNet / CLIP ones)."""

PREFIXES = (
    ("lora_transformer_", "transformer"),
    ("lora_te1_", "text_encoder"),
    ("lora_te2_", "text_encoder_2"),
    ("lora_te3_", "text_encoder_3"),
    ("lycoris_", "transformer"),
)
"""Read only: `lycoris_` names the transformer's diffusers paths in SimpleTuner's LyCORIS files."""
CLIP_ENCODERS = ("text_encoder", "text_encoder_2")

LORA_NAMING = DottedKohyaNaming.of(
    PREFIXES,
    UNET_CLIP_COMPOUND_NAMES | MMDIT_COMPOUND_NAMES | T5_COMPOUND_NAMES,
    text_encoders=CLIP_ENCODERS,
    projected=CLIP_ENCODERS,
)
