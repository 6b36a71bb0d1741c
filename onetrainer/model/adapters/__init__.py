"""Adapters trained on or applied to a base model: LoRA-family layers and textual-inversion embeddings.

Savers and the training setup find what was added through `DiffusionModel.adapters`:
`lora` holds a `LoraAdapter`, `embeddings` a list of `EmbeddingAdapter`.
"""

from onetrainer.model.adapters.embedding import EmbeddingAdapter, add_embedding, read_embedding_file
from onetrainer.model.adapters.lora import LoraAdapter, inject_lora, load_lora_state
from onetrainer.model.adapters.lora_file import LoraFile, read_lora_file
from onetrainer.model.adapters.lora_merge import merge_lora

__all__ = [
    "EmbeddingAdapter",
    "LoraAdapter",
    "LoraFile",
    "add_embedding",
    "inject_lora",
    "load_lora_state",
    "merge_lora",
    "read_embedding_file",
    "read_lora_file",
]
