"""Key conversions between the layouts users load: tables of data plus one small engine.

- `engine`: `Row` tables, `KeyTable` lookup, `StreamConverter` (tensor by tensor), `convert`.
- `ldm_tables`: diffusers <-> original (LDM/SGM) UNet, VAE, CLIP and OpenCLIP rows; families compose
  them into their single-file layouts (in the family's own `<family>_single_file` module).
- `lora` / `lora_peft`: PEFT and diffusers LoRA files <-> kohya / LyCORIS parameters, alpha semantics,
  format detection; `kohya_names`: kohya module names over diffusers paths.
- `embeddings`: A1111 <-> diffusers textual-inversion layouts.
- `comfy`: ComfyUI's scaled fp8 parts, which single-file readers skip.

Importing this package loads no torch: the tables are plain data, heavy imports live in functions.
"""
