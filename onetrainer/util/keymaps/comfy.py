"""ComfyUI's checkpoint conventions that several families' single-file layouts share.

ComfyUI stores some parts of a checkpoint in its scaled fp8 (or mixed-precision) formats: each weight is
fp8 with its own scale beside it (`.scale_weight`, ...), and a part's marker key says so (`scaled_fp8`).
Such weights are meaningless without their scales, so a reader skips the whole part, which then comes
from `model.config` as a part the file lacks does.
"""

from __future__ import annotations

from collections.abc import Iterable

from onetrainer.util.keymaps.engine import Ignore

SCALED_MARKERS = ("scaled_fp8", ".scale_weight", ".scale_input", ".weight_scale", ".comfy_quant")
"""Keys of ComfyUI's scaled fp8 and mixed-precision formats: each weight needs its own scale applied."""


def scaled_parts(keys: Iterable[str], parts: Iterable[str]) -> tuple[str, ...]:
    """The `parts` (key prefixes of a checkpoint's components) stored in a scaled format, which are not read."""
    keys = list(keys)
    return tuple(part for part in parts if any(key.startswith(part) and key.endswith(SCALED_MARKERS) for key in keys))


def skipping_scaled(ignore: Ignore, keys: Iterable[str], parts: Iterable[str]) -> Ignore:
    """`ignore`, also dropping every key of the `parts` a file with these keys holds in a scaled format."""
    return Ignore(ignore.exact, ignore.prefixes + scaled_parts(keys, parts), ignore.suffixes)
