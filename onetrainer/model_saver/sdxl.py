"""SDXL saves through the shared saver: every layout it writes comes from its family spec.

- LoRA: kohya names over the SGM UNet modules and `lora_te1_` / `lora_te2_` (what sd-scripts writes and
  A1111/Forge and ComfyUI load), or peft (diffusers' `load_lora_weights`).
- Embedding: A1111's `clip_l` + `clip_g` pair in one file. diffusers loads that file itself, one
  `load_textual_inversion(state_dict["clip_l" / "clip_g"], token=..., text_encoder=..., tokenizer=...)`
  call per encoder; its single-tensor `learned_embeds` layout cannot hold both, so it is refused.
- Full model: a diffusers folder, or the SGM single file (`.safetensors` output).
"""

from __future__ import annotations

from onetrainer.model_saver.diffusion import DiffusionSaver
from onetrainer.util.registry import ModuleKind, register

register(ModuleKind.SAVER, "sdxl")(DiffusionSaver)
