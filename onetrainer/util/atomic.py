"""Atomic file and folder writes: every file onetrainer writes goes through here.

A crash, a full disk or Ctrl-C during a write must never leave a half-written model, backup or cache
entry where a good one is expected. We write to a temporary sibling (same filesystem, so the final
`os.replace` is atomic) and rename only once the content is complete and flushed.

The temporary name is chosen before it is created and the creation happens inside the block that
removes it on any exception, so an interrupt at any moment leaves nothing behind. Only `kill -9` (or
a power cut) can; for that, temporary names carry the writing process's pid and host,
`.<target>.<pid>@<host>.<random>.tmp` (`.old` for a folder being replaced), and
`remove_stale_temps` deletes those whose writer is gone. Errors name the target, never the
temporary file, which the user has never heard of.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import secrets
import shutil
import socket
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

_HOST = hashlib.sha1(socket.gethostname().encode("utf-8")).hexdigest()[:8]
"""Short tag of this machine: a pid only identifies a process on the host that wrote the name."""

_TEMP_NAME = re.compile(r"^\..+\.(?P<pid>\d+)@(?P<host>[0-9a-f]{8})\.[0-9a-f]{8}\.(?:tmp|old)$")

STALE_AFTER_S = 24 * 3600
"""A temporary of another host (or of a pid that was reused) untouched this long has no live writer."""

_CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)


def temp_sibling(target: Path, suffix: str) -> Path:
    """A fresh temporary name beside `target`, tagged with this process (see the module docstring)."""
    return target.parent / f".{target.name}.{os.getpid()}@{_HOST}.{secrets.token_hex(4)}{suffix}"


def _fsync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _retarget(name: Any, tmp: Path, target: Path) -> Any:
    """`name` with the temporary path (or a path inside a temporary folder) replaced by the target."""
    if name is None:
        return None
    path = Path(os.fsdecode(name))
    if path == tmp:
        return str(target)
    if path.is_relative_to(tmp):
        return str(target / path.relative_to(tmp))
    return name


def _naming_target(error: OSError, tmp: Path, target: Path) -> OSError:
    """The same error, naming what the caller asked to write instead of our temporary file."""
    if error.errno is None:
        return error
    filename = _retarget(error.filename, tmp, target)
    filename2 = _retarget(error.filename2, tmp, target)
    if filename is None:
        filename = str(target)
    if filename2 == filename:
        filename2 = None
    if (filename, filename2) == (error.filename, error.filename2):
        return error
    try:
        return type(error)(error.errno, error.strerror, filename, None, filename2)
    except TypeError:  # a library's OSError subclass with its own constructor: keep it as it is
        return error


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike[str], mode: str = "wb", **open_kwargs: Any) -> Iterator[IO[Any]]:
    """Open a temporary sibling of `path` for writing; it replaces `path` only if the block succeeds."""
    target = Path(path)
    tmp = temp_sibling(target, ".tmp")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(tmp, _CREATE_FLAGS, 0o666)
        with os.fdopen(fd, mode, **open_kwargs) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
        _fsync_dir(target.parent)
    except BaseException as error:
        _remove_temporary(tmp)
        if isinstance(error, OSError):
            raise _naming_target(error, tmp, target) from error
        raise


def _remove_temporary(tmp: Path) -> None:
    """Remove a failed write's temporary; one that cannot be removed (its folder is a file) must not hide the
    error that made the write fail, which names the target."""
    with contextlib.suppress(OSError):
        tmp.unlink(missing_ok=True)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    with atomic_file(path, "wb") as handle:
        handle.write(data)


def atomic_write_text(path: str | os.PathLike[str], text: str, encoding: str = "utf-8") -> None:
    with atomic_file(path, "w", encoding=encoding, newline="") as handle:
        handle.write(text)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary file path for libraries that insist on writing to a path themselves."""
    target = Path(path)
    tmp = temp_sibling(target, ".tmp")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        os.close(os.open(tmp, _CREATE_FLAGS, 0o666))
        yield tmp
        written = os.open(tmp, os.O_RDWR | getattr(os, "O_BINARY", 0))
        try:
            os.fsync(written)
        finally:
            os.close(written)
        os.replace(tmp, target)
        _fsync_dir(target.parent)
    except BaseException as error:
        _remove_temporary(tmp)
        if isinstance(error, OSError):
            raise _naming_target(error, tmp, target) from error
        raise


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike[str], *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary folder that becomes `path` once the block has filled it.

    With `overwrite`, an existing folder is moved aside first and deleted only after the new one is in
    place, so at every moment either the old or the new complete folder exists; an interrupt between
    the two renames moves the old one back.
    """
    target = Path(path)
    if target.exists() and not overwrite:
        raise FileExistsError(target)
    tmp = temp_sibling(target, ".tmp")
    old: Path | None = None
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        os.mkdir(tmp, 0o777)
        yield tmp
        if target.exists():
            old = temp_sibling(target, ".old")
            os.replace(target, old)
        os.replace(tmp, target)
        _fsync_dir(target.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException as error:
        if old is not None and old.exists():
            if target.exists():
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(old, target)
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(error, OSError):
            raise _naming_target(error, tmp, target) from error
        raise


def save_safetensors(
    tensors: Mapping[str, torch.Tensor],
    path: str | os.PathLike[str],
    metadata: Mapping[str, str] | None = None,
) -> None:
    """Write a safetensors file atomically, in the one layout all our files share (`util.safetensors_stream`).

    The library's `save_file` writes in place (so not atomically) and starts the data wherever the
    header happens to end; the streaming writer does neither.
    """
    from onetrainer.util.safetensors_stream import state_dict_stream, write_safetensors_stream

    write_safetensors_stream(path, state_dict_stream(tensors), metadata)


def process_tag() -> str:
    """`<pid>@<host>`: names this process in files other processes read (temporaries, cache leases)."""
    return f"{os.getpid()}@{_HOST}"


def tagged_process_gone(tag: str) -> bool:
    """Whether the process a `process_tag` names has ended (only knowable on its own POSIX host)."""
    pid, _, host = tag.partition("@")
    return pid.isdigit() and _writer_gone(int(pid), host)


def _writer_gone(pid: int, host: str) -> bool:
    """Whether the process that named a temporary has ended (only knowable on its own POSIX host)."""
    if host != _HOST or os.name != "posix":
        return False
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def _is_stale(path: Path, now: float) -> bool:
    match = _TEMP_NAME.match(path.name)
    if match is None:
        return False
    if _writer_gone(int(match["pid"]), match["host"]):
        return True
    try:
        return now - path.lstat().st_mtime > STALE_AFTER_S
    except OSError:
        return False


def remove_stale_temps(directory: str | os.PathLike[str], *, recursive: bool = False) -> list[Path]:
    """Delete the temporary files and folders our writers left in `directory` when their process died.

    Only names our writers produce are considered, and only those whose writer is gone (its pid no
    longer runs on this host) or that nobody touched for `STALE_AFTER_S`. Best effort: a file that
    cannot be removed is left alone. Returns what was removed.
    """
    root = Path(directory)
    if not root.is_dir():
        return []
    now = time.time()
    removed = []
    for folder, subfolders, files in os.walk(root):
        base = Path(folder)
        for name in [*subfolders, *files]:
            path = base / name
            if not _is_stale(path, now):
                continue
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    path.unlink()
            if not path.exists():
                removed.append(path)
        subfolders[:] = [name for name in subfolders if (base / name).is_dir()] if recursive else []
    return removed
