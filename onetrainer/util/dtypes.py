"""The one table of weight dtypes: the names users write and what they mean.

Config values (`model.dtype`, `parts.<name>.weight_dtype`, `training.precision`, `saving.dtype`) and
the `--dtype` options of the commands all spell dtypes with these names; every module converts them
here, so a new storage dtype is added in one place.

Three of the storage dtypes are not torch dtypes but quantised formats of linear-layer weights
(`QUANTISED`): fp8 (e4m3 with a scale per output row), int8 (a scale per row) and nf4 (4-bit normal
float in blocks of 64 with double-quantised scales, bitsandbytes' QLoRA format). The rest of such a
part (convolutions, norms, embeddings) is stored in its compute dtype. `BITS_PER_WEIGHT` is what a
quantised weight costs on average, scales included, for the memory estimate.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from onetrainer.util.errors import UserError

if TYPE_CHECKING:
    import torch

TORCH_NAMES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}
"""Our name -> the attribute of `torch` that is the dtype."""

QUANTISED = ("fp8", "int8", "nf4")
"""Weight-only storage formats of frozen linear layers (see `onetrainer.model.quantised`)."""

WEIGHT_DTYPES = (*TORCH_NAMES, *QUANTISED)
"""Everything `parts.<name>.weight_dtype` accepts."""

BITS_PER_WEIGHT = {
    "fp32": 32.0,
    "fp16": 16.0,
    "bf16": 16.0,
    "fp8": 8.0,
    "int8": 8.0,
    "nf4": 4.0 + 8.0 / 64 + 32.0 / (64 * 256),
}
"""Storage bits per weight; nf4 adds one 8-bit scale per 64 weights and one fp32 scale per 256 scales."""

ROW_SCALE_BYTES = {"fp8": 4, "int8": 5}
"""Bytes per output row beside the weights: fp8 and int8 keep an fp32 scale (int8 also an int8 zero point)."""


def torch_dtype(name: object) -> torch.dtype:
    """fp32/fp16/bf16 (a string, a config enum or already a torch dtype) -> the torch dtype."""
    import torch

    if isinstance(name, torch.dtype):
        return name
    value = getattr(name, "value", name)
    if value in QUANTISED:
        raise UserError(f"{value} is a quantised storage format, not a torch dtype", hint="Use fp32, fp16 or bf16.")
    if value not in TORCH_NAMES:
        raise UserError(f"unknown dtype {value!r}", hint=f"Use one of: {', '.join(TORCH_NAMES)}.")
    dtype: torch.dtype = getattr(torch, TORCH_NAMES[str(value)])
    return dtype


def is_quantised(name: object) -> bool:
    """Whether a weight dtype name is one of the quantised formats."""
    return getattr(name, "value", name) in QUANTISED


def dtype_name(dtype: torch.dtype) -> str:
    """torch.bfloat16 -> "bf16"; dtypes without a short name keep torch's name."""
    text = str(dtype).removeprefix("torch.")
    return next((name for name, torch_name in TORCH_NAMES.items() if torch_name == text), text)


def layer_dtype(root: Any, path: str, dtype: torch.dtype) -> torch.dtype:
    """The dtype the layer at `path` of `root` computes in when `root` runs in `dtype`: fp32 for the layers a
    transformers model keeps in fp32 under fp16 (`_keep_in_fp32_modules`: T5's `wo`, whose activations
    overflow fp16), as its own `from_pretrained(torch_dtype=float16)` does, quantised or not; else `dtype`."""
    import torch

    names = set(getattr(root, "_keep_in_fp32_modules", None) or ())
    return torch.float32 if dtype == torch.float16 and names & set(path.split(".")) else dtype
