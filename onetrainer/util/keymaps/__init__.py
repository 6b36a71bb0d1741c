"""Key conversions between the layouts users load: tables of data plus one small engine.

- `engine`: `Row` tables, `KeyTable` lookup, `StreamConverter` (tensor by tensor), `convert`.
- `sd_tables` / `single_file`: diffusers <-> original single-file checkpoints (SD 1.x, 2.x) and
  family detection from key names and shapes.
- `lora` / `lora_peft`: PEFT and diffusers LoRA files <-> kohya / LyCORIS names, alpha semantics,
  format detection.
- `embeddings`: A1111 <-> diffusers textual-inversion layouts.

Importing this package loads no torch: the tables are plain data, heavy imports live in functions.
"""

from onetrainer.util.keymaps.embeddings import a1111_to_embedding, embedding_to_a1111, embedding_to_diffusers
from onetrainer.util.keymaps.engine import Ignore, KeyMapError, KeyTable, Row, StreamConverter, convert
from onetrainer.util.keymaps.lora import (
    detect_lora_format,
    kohya_module_name,
    kohya_to_peft,
    peft_module_path,
    peft_to_kohya,
)
from onetrainer.util.keymaps.lora_peft import (
    diffusers_lora_metadata,
    peft_adapter_state,
    peft_lora_config_kwargs,
)
from onetrainer.util.keymaps.single_file import (
    SingleFileInfo,
    detect_single_file_family,
    diffusers_to_single_file,
    from_single_file_stream,
    single_file_to_diffusers,
    table_for_diffusers_keys,
    table_for_single_file_keys,
    to_single_file_stream,
)

__all__ = [
    "Ignore",
    "KeyMapError",
    "KeyTable",
    "Row",
    "SingleFileInfo",
    "StreamConverter",
    "a1111_to_embedding",
    "convert",
    "detect_lora_format",
    "detect_single_file_family",
    "diffusers_lora_metadata",
    "diffusers_to_single_file",
    "embedding_to_a1111",
    "embedding_to_diffusers",
    "from_single_file_stream",
    "kohya_module_name",
    "kohya_to_peft",
    "peft_adapter_state",
    "peft_lora_config_kwargs",
    "peft_module_path",
    "peft_to_kohya",
    "single_file_to_diffusers",
    "table_for_diffusers_keys",
    "table_for_single_file_keys",
    "to_single_file_stream",
]
