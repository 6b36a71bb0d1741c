"""The one table of weight dtypes: the names users write and the torch dtypes they mean.

Config values (`model.dtype`, `parts.<name>.weight_dtype`, `training.precision`, `saving.dtype`) and
the `--dtype` options of the commands all spell dtypes with these names; every module converts them
here, so a new storage dtype is added in one place.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from onetrainer.util.errors import UserError

if TYPE_CHECKING:
    import torch

TORCH_NAMES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}
"""Our name -> the attribute of `torch` that is the dtype."""


def torch_dtype(name: object) -> torch.dtype:
    """fp32/fp16/bf16 (a string, a config enum or already a torch dtype) -> the torch dtype."""
    import torch

    if isinstance(name, torch.dtype):
        return name
    value = getattr(name, "value", name)
    if value not in TORCH_NAMES:
        raise UserError(f"unknown dtype {value!r}", hint=f"Use one of: {', '.join(TORCH_NAMES)}.")
    dtype: torch.dtype = getattr(torch, TORCH_NAMES[str(value)])
    return dtype


def dtype_name(dtype: torch.dtype) -> str:
    """torch.bfloat16 -> "bf16"; dtypes without a short name keep torch's name."""
    text = str(dtype).removeprefix("torch.")
    return next((name for name, torch_name in TORCH_NAMES.items() if torch_name == text), text)
