"""The one small engine behind every key-map table: rename rows, applied key by key.

A table is a list of `Row`s, plain data. Each row pairs a name on the "source" side (diffusers) with
a name on the "target" side (an original single file, a kohya LoRA, ...). A name ending in "." is a
prefix and carries the rest of the key along; any other name is an exact key. Rows may also say how
the tensor changes on the way (a 1x1-conv reshape, a transpose), and a fused row joins several source
tensors into one target tensor (OpenCLIP's in_proj = q, k, v), which splits again on the way back:
into equal parts, or in the proportions the row gives (a q, k, v and 4x-wide MLP projection fused
into one: 1:1:1:4).

Lookup is by longest matching prefix, so a table can hold a general row (`output_blocks.3.1.` is an
attention) next to a more specific one (`output_blocks.3.1.conv.` is an upsampler).

`StreamConverter` applies a table one tensor at a time, so a multi-GB checkpoint converts without
holding two copies: only the parts of a fused tensor wait for their siblings.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from onetrainer.util.errors import UserError

if TYPE_CHECKING:
    import torch

COPY = ""
CONV1X1 = "conv1x1"
"""Source [out, in] (a Linear) is target [out, in, 1, 1] (a 1x1 Conv2d)."""
TRANSPOSE = "transpose"
"""Target is the source matrix transposed."""
SWAP_HALVES = "swap-halves"
"""Target is the source with the two halves of dim 0 swapped (an adaptive norm's (scale, shift) written
as (shift, scale)); its own inverse."""
IDENTITY_ON_READ = "identity-on-read"
"""Read as the identity matrix of the target's shape, whatever the file holds; written as it is (a
projection its model never applies, which the other tools reading the file set to the identity too)."""


class KeyMapError(UserError):
    """A state dict holds keys that the table cannot place, or a fused tensor is incomplete."""

    title = "Key conversion failed"


@dataclass(frozen=True)
class Row:
    """One line of a table. `source` is a tuple of exact keys for a fused row (joined along dim 0)."""

    source: str | tuple[str, ...]
    target: str
    op: str = COPY
    ratios: tuple[int, ...] | None = None
    """A fused row's part sizes along dim 0, in proportion (None: equal parts)."""


@dataclass(frozen=True)
class Mapped:
    """Where one key goes: its new key(s) and what happens to its tensor.

    `part`/`parts` say which slice of a fused target this source tensor is; `keys` holds several
    names when a fused tensor is split going the other way.
    """

    keys: tuple[str, ...]
    op: str = COPY
    part: int = 0
    parts: int = 1
    ratios: tuple[int, ...] | None = None


class KeyTable:
    """A two-way lookup built from `Row`s: `forward` is source -> target, `reverse` the opposite."""

    def __init__(self, rows: Iterable[Row]) -> None:
        self._fwd: dict[str, Mapped] = {}
        self._rev: dict[str, Mapped] = {}
        for row in rows:
            if isinstance(row.source, tuple):
                n = len(row.source)
                for i, part in enumerate(row.source):
                    self._fwd[part] = Mapped((row.target,), row.op, i, n)
                self._rev[row.target] = Mapped(row.source, row.op, 0, n, row.ratios)
            else:
                self._fwd[row.source] = Mapped((row.target,), row.op)
                self._rev[row.target] = Mapped((row.source,), row.op)

    def lookup(self, key: str, *, reverse: bool = False) -> Mapped | None:
        """Map one key, or None if no row covers it."""
        table = self._rev if reverse else self._fwd
        hit = table.get(key)
        if hit is not None:
            return hit
        cut = key.rfind(".")
        while cut > 0:
            head = key[: cut + 1]
            hit = table.get(head)
            if hit is not None and len(hit.keys) == 1:
                return Mapped((hit.keys[0] + key[cut + 1 :],), hit.op)
            cut = key.rfind(".", 0, cut)
        return None

    def map_key(self, key: str, *, reverse: bool = False) -> str | None:
        """The new name of one key (the fused name for a part of a fused tensor), or None."""
        hit = self.lookup(key, reverse=reverse)
        return None if hit is None else hit.keys[0]


def _reshape(tensor: torch.Tensor, op: str, reverse: bool) -> torch.Tensor:
    if op == CONV1X1:
        if not reverse and tensor.ndim == 2:
            return tensor[:, :, None, None]
        if reverse and tensor.ndim == 4:
            return tensor[:, :, 0, 0]
    elif op == TRANSPOSE:
        return tensor.T
    elif op == SWAP_HALVES:
        import torch

        first, second = tensor.chunk(2, dim=0)
        return torch.cat([second, first])
    elif op == IDENTITY_ON_READ and reverse:
        import torch

        return torch.eye(*tensor.shape, dtype=tensor.dtype, device=tensor.device)
    return tensor


def split_sizes(length: int, parts: int, ratios: tuple[int, ...] | None) -> list[int]:
    """Sizes of `parts` pieces of a dim of `length`: equal, or in the given proportions."""
    weights = ratios or (1,) * parts
    unit, left = divmod(length, sum(weights))
    if left:
        raise KeyMapError(f"a fused tensor of {length} rows cannot split into parts of {weights} proportions")
    return [unit * weight for weight in weights]


class StreamConverter:
    """Converts tensors one at a time through a table.

    Keys `ignore` names are dropped (and listed in `ignored`); keys no row covers are collected in
    `unmapped` rather than raised at once, so `finish` can report all of them together.
    """

    def __init__(self, table: KeyTable, *, reverse: bool = False, ignore: Ignore | None = None) -> None:
        self.table = table
        self.reverse = reverse
        self.ignore = ignore or Ignore()
        self.unmapped: list[str] = []
        self.ignored: list[str] = []
        self._pending: dict[str, dict[int, torch.Tensor]] = {}

    def feed(self, key: str, tensor: torch.Tensor) -> Iterator[tuple[str, torch.Tensor]]:
        """Yield the converted (key, tensor) pairs this input completes (none while a fuse waits)."""
        if self.ignore.matches(key):
            self.ignored.append(key)
            return
        hit = self.table.lookup(key, reverse=self.reverse)
        if hit is None:
            self.unmapped.append(key)
            return
        if len(hit.keys) > 1:
            sizes = split_sizes(int(tensor.shape[0]), len(hit.keys), hit.ratios)
            for name, piece in zip(hit.keys, tensor.split(sizes, dim=0), strict=True):
                yield name, _reshape(piece, hit.op, self.reverse)
            return
        if hit.parts == 1:
            yield hit.keys[0], _reshape(tensor, hit.op, self.reverse)
            return
        parts = self._pending.setdefault(hit.keys[0], {})
        parts[hit.part] = tensor
        if len(parts) == hit.parts:
            import torch

            del self._pending[hit.keys[0]]
            joined = torch.cat([parts[i] for i in range(hit.parts)], dim=0)
            yield hit.keys[0], _reshape(joined, hit.op, self.reverse)

    def convert(self, state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Feed a whole state dict and finish."""
        out: dict[str, torch.Tensor] = {}
        for key, tensor in state_dict.items():
            out.update(self.feed(key, tensor))
        self.finish()
        return out

    def finish(self) -> None:
        """Raise if a fused tensor is missing parts or a key had no row."""
        problems = [f"{name}: only parts {sorted(parts)} present" for name, parts in self._pending.items()]
        problems += [f"{key}: no conversion rule" for key in self.unmapped]
        if problems:
            shown = "\n".join(problems[:20]) + (f"\n... and {len(problems) - 20} more" if len(problems) > 20 else "")
            raise KeyMapError(
                f"{len(problems)} key(s) could not be converted:\n{shown}",
                hint="the file may be a different model family or layout than requested",
            )


@dataclass(frozen=True)
class Ignore:
    """Keys a conversion drops on purpose: exact names, prefixes (ending in ".") and suffixes."""

    exact: frozenset[str] = frozenset()
    prefixes: tuple[str, ...] = ()
    suffixes: tuple[str, ...] = ()

    def matches(self, key: str) -> bool:
        return key in self.exact or key.startswith(self.prefixes) or key.endswith(self.suffixes)


def convert(
    table: KeyTable,
    state_dict: Mapping[str, torch.Tensor],
    *,
    reverse: bool = False,
    ignore: Ignore | None = None,
) -> dict[str, torch.Tensor]:
    """Convert a whole state dict; raises `KeyMapError` listing every key that could not be placed."""
    return StreamConverter(table, reverse=reverse, ignore=ignore).convert(state_dict)
