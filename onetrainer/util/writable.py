"""Whether a file can be created at a path, asked before the work whose result it will hold.

A read-only folder, or a file standing where a folder is needed, should stop a command in its first
second, not after minutes of sampling or training. The test is real: a temporary file is created and
removed in the nearest folder that exists (the folders below it are created on write), so
permissions, read-only mounts and full quotas are all caught, whoever runs the command.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from onetrainer.util.errors import UserError


def check_writable(path: str | os.PathLike[str], *, where: str | None = None) -> None:
    """Raise a `UserError` now if a file at `path` could not be created later."""
    target = Path(path).expanduser().absolute()
    folder = target.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise UserError(
            f"cannot write {target}: {folder} is a file, not a folder",
            where=where,
            hint="Choose an output path whose folders are folders.",
        )
    error = creation_error(folder)
    if error is not None:
        raise UserError(
            f"cannot write into {folder}: {error.strerror or error}",
            where=where,
            hint="Choose a folder you can write to, or fix its permissions (or the disk's read-only state).",
        )


def check_output_file(path: str | os.PathLike[str], *, overwrite: bool, where: str | None = None) -> None:
    """Raise a `UserError` now if the one file a command writes cannot go to `path`: a folder stands there
    (even `--overwrite` must not replace a folder with a file), the file exists and `overwrite` is off, or
    no file can be created there (`check_writable`). Asked before the work, so a mistyped `-o` loses nothing."""
    target = Path(path).expanduser()
    if target.is_dir():
        hint = "Name a file, such as one inside that folder."
        raise UserError(f"the output is a folder, not a file: {target}", where=where, hint=hint)
    if target.exists() and not overwrite:
        raise UserError(f"the output exists: {target}", where=where, hint="Pass --overwrite to replace it.")
    check_writable(target, where=where)


def creation_error(folder: Path) -> OSError | None:
    """Why no file can be created in `folder`, found by creating (and removing) one; None when one can.
    `os.access` answers yes for root, and cannot see read-only mounts or ACLs."""
    try:
        handle, name = tempfile.mkstemp(prefix=".onetrainer-write-check.", suffix=".tmp", dir=folder)
    except OSError as error:
        return error
    os.close(handle)
    os.unlink(name)
    return None
