"""FLUX.1 saves through the shared saver: every layout it writes comes from its family spec.

- LoRA: kohya names over BFL's transformer modules (q, k, v merged into the fused layers, see
  `util.keymaps.flux_lora`) with `lora_te1_` (CLIP-L) and `lora_te3_` (T5), which ComfyUI and Forge load;
  or peft (`transformer.*`, `text_encoder.*`: diffusers' `load_lora_weights`, which also reads the kohya file).
- Embedding: `clip_l` + `t5xxl` vectors in one file (ComfyUI's keys for FLUX.1's two encoders).
- Full model: a diffusers folder, or BFL's transformer single file (`.safetensors` output), which
  ComfyUI loads as a diffusion model and diffusers' `FluxTransformer2DModel.from_single_file` reads.
"""

from __future__ import annotations

from onetrainer.model_saver.diffusion import DiffusionSaver
from onetrainer.util.registry import ModuleKind, register

register(ModuleKind.SAVER, "flux-dev", "flux-schnell")(DiffusionSaver)
