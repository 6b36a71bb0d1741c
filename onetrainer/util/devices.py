"""The device and weights dtype a command runs a model on, from the words users type.

`sample`, `caption` and `mask` (and `convert`'s `--dtype`) share one vocabulary: a device is `auto`,
`cpu`, `cuda`, `cuda:N` or `mps`; a dtype is `auto`, `fp32`, `fp16` or `bf16`, the names the config
files use too. `auto` means the first GPU when there is one, and half precision only on a GPU,
where it is fast (on the CPU it is slow, and fp16 is partly unsupported).
"""

from __future__ import annotations

from enum import Enum
from typing import TYPE_CHECKING

from onetrainer.util.errors import UserError

if TYPE_CHECKING:
    import torch


class WeightsDtype(str, Enum):
    AUTO = "auto"
    FP32 = "fp32"
    FP16 = "fp16"
    BF16 = "bf16"


_TORCH_NAMES = {WeightsDtype.FP32: "float32", WeightsDtype.FP16: "float16", WeightsDtype.BF16: "bfloat16"}


def resolve_device(name: str, *, where: str | None = "--device") -> str:
    """`auto` -> `cuda` when a CUDA GPU is present, else `cpu`; an unavailable device is a user error."""
    import torch

    device = name.strip().lower()
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    kind, _, index = device.partition(":")
    if kind == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise UserError(
                f"device {name!r} is not available: this machine has no CUDA GPU", where=where, hint="Use cpu or auto."
            )
        if index and (not index.isdigit() or int(index) >= count):
            raise UserError(
                f"device {name!r} is not available: this machine has {count} CUDA GPU(s)",
                where=where,
                hint=f"Use cuda:0 to cuda:{count - 1}, or auto.",
            )
        return device
    if device == "mps":
        if not torch.backends.mps.is_available():
            raise UserError("device 'mps' is not available on this machine", where=where, hint="Use cpu or auto.")
        return device
    if device == "cpu":
        return device
    raise UserError(f"unknown device {name!r}", where=where, hint="Use auto, cpu, cuda, cuda:N or mps.")


def gpu_memory(device: str) -> int | None:
    """Total bytes of the CUDA GPU that `device` (a device word: `auto`, `cuda`, `cuda:N`, ...) trains on here;
    None for any other device, or one this machine does not have (a config may be planned elsewhere)."""
    import torch

    kind, _, index = device.strip().lower().partition(":")
    if kind not in ("auto", "cuda") or not torch.cuda.is_available():
        return None
    number = int(index) if index.isdigit() else 0
    if number >= torch.cuda.device_count():
        return None
    return int(torch.cuda.get_device_properties(number).total_memory)


def parse_dtype(name: str | WeightsDtype, *, where: str | None = "--dtype") -> WeightsDtype:
    """The dtype `name` spells, or a user error listing the valid names."""
    try:
        return WeightsDtype(getattr(name, "value", name))
    except ValueError:
        valid = ", ".join(member.value for member in WeightsDtype)
        raise UserError(f"unknown dtype {name!r}", where=where, hint=f"Use one of: {valid}.") from None


def resolve_dtype(name: str | WeightsDtype, device: str) -> str:
    """fp32, fp16 or bf16 (`auto`: fp16 on a CUDA GPU, fp32 elsewhere)."""
    dtype = parse_dtype(name)
    if dtype is WeightsDtype.AUTO:
        dtype = WeightsDtype.FP16 if device.startswith("cuda") else WeightsDtype.FP32
    return dtype.value


def torch_dtype(name: str | WeightsDtype, device: str) -> torch.dtype:
    """The torch dtype `resolve_dtype` chooses."""
    import torch

    return getattr(torch, _TORCH_NAMES[WeightsDtype(resolve_dtype(name, device))])
