"""Where a tool's model comes from: short names, local folders and hub ids, checked before any work.

Loading goes through the libraries' own `from_pretrained` / `hf_hub_download`, so the hub cache and
`HF_HUB_OFFLINE` behave as users expect; what we add is checking `--model` before the folder is read
(a typo, a missing path), and one message for a hub model that is not available (`util.missing`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

from onetrainer.util.errors import UserError
from onetrainer.util.missing import missing_path, model_unavailable
from onetrainer.util.suggest import did_you_mean

T = TypeVar("T")

MODEL_OPTION = "--model"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def local_path(source: str) -> Path | None:
    """The local file or folder `source` names, or None when it is a hub id.

    A string that exists on disk is a path; one shaped like `org/name` that does not exist is a hub
    id; anything else (`./models/x`, `/abs/path`, `~/x`) was meant as a path that is missing.
    """
    path = Path(source).expanduser()
    if path.exists():
        return path
    if _HUB_ID.match(source) and not source.startswith((".", "~")):
        return None
    raise missing_path(source, what="model", where=MODEL_OPTION, also="A hub id looks like org/name.")


def check_model_name(model: str, short_names: Sequence[str], *, what: str) -> None:
    """Refuse a `--model` that is no short name, existing path or hub id, before any image is read.

    A bare word is taken for a misspelt short name (`colour` -> `color`); anything path-like that does
    not exist is a missing path.
    """
    if model in short_names:
        return
    if "/" in model or "\\" in model or model.startswith((".", "~")) or Path(model).expanduser().exists():
        local_path(model)
        return
    names = "".join(f"{name}, " for name in short_names)
    raise UserError(
        f"unknown {what} {model!r}; {did_you_mean(model, short_names)}".rstrip("; "),
        where=MODEL_OPTION,
        hint=f"Use {names}a local model folder, or a hub id like org/name.",
    )


def load_from_hub_or_path(load: Callable[[str], T], source: str, *, what: str) -> T:
    """Call `load(source)` and turn "not downloadable / not cached" into one clear `UserError`."""
    path = local_path(source)
    try:
        return load(str(path) if path is not None else source)
    except OSError as error:
        if path is not None:
            raise UserError(f"cannot load the {what} from {path}: {_first_line(error)}", where=MODEL_OPTION) from None
        raise model_unavailable(source, where=MODEL_OPTION, what=what, reason=_first_line(error)) from None


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
