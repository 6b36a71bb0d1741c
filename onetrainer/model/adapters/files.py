"""Reading small adapter files (LoRA, embeddings): safetensors, or pickles only through weights_only.

Adapter files come from anywhere (model sites, other trainers), so every failure to read one becomes
a user error naming the file; the container is recognised by its bytes, not its suffix, and pickles
go through `util.detect`'s weights-only reader, which refuses anything that needs code to unpickle.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from onetrainer.util.detect import SAFETENSORS, load_pickle_weights, sniff_container
from onetrainer.util.errors import UserError
from onetrainer.util.missing import missing_path

if TYPE_CHECKING:
    import torch


def read_tensor_file(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """All tensors of the file (nested pickle dicts flattened with dots) and its metadata."""
    file = Path(path).expanduser()
    if not file.exists():
        raise missing_path(file, what="file", where=None)
    if not file.is_file():
        raise UserError(f"expected a file, got a folder: {file}", hint="Name the weights file inside it.")
    if sniff_container(file) != SAFETENSORS:
        return load_pickle_weights(file)
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(file), framework="pt") as handle:
            metadata = dict(handle.metadata() or {})
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118 (not a dict)
    except (SafetensorError, OSError, ValueError) as error:
        raise UserError(
            f"not a readable safetensors file: {error}",
            where=str(file),
            hint="The file may be truncated (an interrupted download) or in another format.",
        ) from None
    return tensors, metadata
