"""Which model family a base model is: from the name the user gave, else detected from the source.

Every command with `--model-type` parses it here, against the registry: a command accepts the
families that have the modules it needs (`sample` a loader and a sampler), so no command accepts a
family it cannot run. `sample`, which must pick the family's registered loader before loading,
detects the family here from the files or the hub repo's configs. The multiples that bucket and
sampled image sides must be come from the family spec, without loading anything.
"""

from __future__ import annotations

from collections.abc import Sequence

from onetrainer.model_loader.pipeline import detect_model_type
from onetrainer.util.errors import UserError
from onetrainer.util.family import family_names, get_family
from onetrainer.util.registry import ModuleKind, supporting
from onetrainer.util.suggest import did_you_mean


def parse_model_type(name: str | None, *, needs: Sequence[ModuleKind], where: str = "--model-type") -> str | None:
    """`require_model_type`, with None (not given) staying None."""
    return None if name is None else require_model_type(name, needs=needs, where=where)


def require_model_type(name: str, *, needs: Sequence[ModuleKind], where: str = "--model-type") -> str:
    """The model type `name` spells, if it has every module in `needs`; else a user error listing those that do."""
    usable = supporting(needs)
    known = family_names()
    if name not in known:
        raise UserError(
            f"unknown model type {name!r}; {did_you_mean(name, known)}".rstrip("; "),
            where=where,
            hint=f"This command supports: {', '.join(usable) or 'none'}.",
        )
    return _require_usable(name, usable, where=where)


def _require_usable(model_type: str, usable: list[str], *, where: str) -> str:
    if model_type not in usable:
        raise UserError(
            f"model type {model_type!r} is not supported by this command in this version",
            where=where,
            hint=f"This command supports: {', '.join(usable) or 'none'}.",
        )
    return model_type


def source_model_type(source: str, explicit: str | None = None, *, needs: Sequence[ModuleKind]) -> str:
    """The family from `explicit`, else from the files of `source` (tiny:<name>, a path, or a hub id)."""
    named = parse_model_type(explicit, needs=needs)
    if named is not None:
        return named
    return _require_usable(detect_model_type(source), supporting(needs), where="model.base")


def bucket_step(model_type: str) -> int:
    """The multiple that training buckets' sides are for this family."""
    return get_family(model_type).bucket_step


def size_step(model_type: str) -> int:
    """The multiple that sampled images' sides must be: what the denoiser accepts (buckets may be coarser)."""
    return get_family(model_type).size_step
