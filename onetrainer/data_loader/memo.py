"""What we already know about each file, remembered by its stat so later runs skip the work.

Verifying that every image decodes and hashing its bytes (for content-keyed cache entries) cost one
full read per file. A record is reused only while the file's size, modification and change times and
inode are unchanged; any change makes it stale and the work is redone for that file alone. The change
time is what a copy that keeps modification times (`cp -p`, `rsync -t`, unpacking an archive) cannot
restore: with size and modification time alone, an image replaced that way kept its old hash, and the
cache served the old image's latents.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

from onetrainer.util.atomic import atomic_write_text

MEMO_VERSION = 1


class FileMemo:
    """A JSON file of per-file records; `readonly` (or `path=None`) never writes anything back."""

    def __init__(self, path: Path | None, *, readonly: bool = False) -> None:
        self.path = path
        self.readonly = readonly
        self._lock = threading.Lock()
        self._dirty = False
        self._records: dict[str, dict[str, Any]] = {}
        if path is not None and path.is_file():
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                data = {}
            if isinstance(data, dict) and data.get("version") == MEMO_VERSION:
                self._records = dict(data.get("files", {}))

    def record(self, file: Path) -> dict[str, Any]:
        """The file's record, reset to empty if the file changed since it was written."""
        stat = file.stat()
        key = str(file.resolve())
        identity = {
            "size": stat.st_size,
            "mtime_ns": stat.st_mtime_ns,
            "ctime_ns": stat.st_ctime_ns,
            "ino": stat.st_ino,
        }
        with self._lock:
            current = self._records.get(key)
            if current is None or any(current.get(name) != value for name, value in identity.items()):
                current = identity
                self._records[key] = current
                self._dirty = True
            return current

    def update(self, file: Path, **values: Any) -> None:
        record = self.record(file)
        with self._lock:
            record.update(values)
            self._dirty = True

    def forget(self, file: Path, *names: str) -> None:
        """Drop what no longer holds (a value found under other settings), keeping the rest of the record."""
        record = self.record(file)
        with self._lock:
            for name in names:
                if record.pop(name, None) is not None:
                    self._dirty = True

    def save(self) -> None:
        if self.path is None or self.readonly:
            return
        with self._lock:
            if not self._dirty:
                return
            text = json.dumps({"version": MEMO_VERSION, "files": self._records}, sort_keys=True)
            self._dirty = False
        atomic_write_text(self.path, text)


def content_hash(file: Path, memo: FileMemo) -> str:
    """SHA-256 of the file's bytes, memoised by its stat."""
    import hashlib

    known = memo.record(file).get("sha256")
    if known:
        return str(known)
    digest = hashlib.sha256()
    with file.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    value = digest.hexdigest()
    memo.update(file, sha256=value)
    return value
