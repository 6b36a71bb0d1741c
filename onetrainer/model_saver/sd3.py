"""SD 3 saves through the shared saver: every layout it writes comes from its family spec.

- LoRA: kohya names over diffusers' modules (`lora_transformer_`, `lora_te1_` CLIP-L, `lora_te2_` bigG,
  `lora_te3_` T5; see `util.keymaps.sd3_lora` for how ComfyUI maps them), or peft (`transformer.*`,
  `text_encoder.*`, ...: diffusers' `load_lora_weights`).
- Embedding: `clip_l`, `clip_g` and `t5xxl` vectors in one file (the keys ComfyUI's SD 3 tokenizers look up).
- Full model: a diffusers folder, or Stability's checkpoint layout (`.safetensors` output: the MMDiT, the
  VAE and the text encoders the model has), which ComfyUI and diffusers' `from_single_file` load.
"""

from __future__ import annotations

from onetrainer.model_saver.diffusion import DiffusionSaver
from onetrainer.util.registry import ModuleKind, register

register(ModuleKind.SAVER, "sd35-large", "sd35-medium", "sd3-medium")(DiffusionSaver)
