"""The content-keyed disk cache of encoder outputs: one safetensors file per entry, plus a manifest.

mgds keyed its cache by concept settings only, so an added file crashed it, a removed one silently
misaligned latents and captions, and OneTrainer wiped the cache every run to stay safe. Here an
entry's key is a hash of everything its content depends on:

* image entries: the image file's bytes, its mask's bytes, the encoder identity, the sample id, the
  bucket, the variation, the run and concept seeds and the concept's image settings (which together
  fix the crop and the augmentation), and a pipeline version;
* text entries: the encoder identity and the final caption text (so identical captions share one).

A changed file therefore gets a new key and is encoded alone; an unchanged one is found again
whatever else changed. Each entry is written atomically, so a killed caching pass leaves only
complete entries and the next pass encodes only what is missing. The manifest remembers which
source file each entry came from, so entries of removed or changed files can be pruned; nothing
else is ever deleted unless `clear()` is asked for.

Pruning never deletes an entry in use: neither one this run found or wrote (a moved dataset's entries
still match; a caption shared by several images is recorded under one of them), nor one another live run
on the same cache folder uses. Each run lists its entries in a lease (`leases/<pid>@<host>.json`) from the
end of its caching pass until it closes; a lease of a process gone from this machine is removed, and one
of another machine is honoured until it is `LEASE_DAYS` old.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from onetrainer.util.atomic import atomic_write_text, process_tag, save_safetensors, tagged_process_gone
from onetrainer.util.errors import RuntimeFailure

if TYPE_CHECKING:
    import torch

IMAGE_PIPELINE_VERSION = 1
"""Bump when the image graph's output for the same inputs changes, so old entries stop matching."""

MANIFEST_VERSION = 1
Kind = Literal["image", "text"]
LEASE_DAYS = 30
"""How long a lease of another machine's run is honoured (its process cannot be checked from here)."""


def _digest(payload: dict[str, Any]) -> str:
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def image_key(
    *,
    content: str,
    mask_content: str | None,
    encoder: str,
    sample_id: str,
    bucket: tuple[int, int],
    variation: int,
    seeds: tuple[int, int],
    settings: dict[str, Any],
) -> str:
    return _digest(
        {
            "kind": "image",
            "version": IMAGE_PIPELINE_VERSION,
            "content": content,
            "mask": mask_content,
            "encoder": encoder,
            "sample": sample_id,
            "bucket": list(bucket),
            "variation": variation,
            "seeds": list(seeds),
            "settings": settings,
        }
    )


def text_key(*, encoder: str, caption: str) -> str:
    return _digest({"kind": "text", "encoder": encoder, "caption": caption})


class CacheStore:
    """Entries under `<root>/<kind>/<key[:2]>/<key>.safetensors`; the manifest at `<root>/manifest.json`."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._root_text = str(root)
        self._lock = threading.Lock()
        self._manifest_path = root / "manifest.json"
        self._entries: dict[str, dict[str, str]] = {}
        self._used: set[str] = set()
        """Keys this run found or wrote: what its batches read."""
        self._leased = False
        self._dirty = False
        if self._manifest_path.is_file():
            try:
                data = json.loads(self._manifest_path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                data = {}
            if isinstance(data, dict) and data.get("version") == MANIFEST_VERSION:
                self._entries = dict(data.get("entries", {}))

    def entry_path(self, kind: Kind, key: str) -> Path:
        return Path(f"{self._root_text}/{kind}/{key[:2]}/{key}.safetensors")

    def has(self, kind: Kind, key: str) -> bool:
        return self.entry_path(kind, key).is_file()

    def read(self, kind: Kind, key: str) -> dict[str, torch.Tensor]:
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        path = self.entry_path(kind, key)
        try:
            return load_file(path)
        except (OSError, SafetensorError) as exc:
            raise RuntimeFailure(
                f"cannot read cache entry {path}: {exc}",
                hint="Fill the cache again (the loader does before training), or set data.clear_cache=true.",
            ) from exc

    def write(self, kind: Kind, key: str, tensors: dict[str, torch.Tensor], *, source: Path, content: str) -> None:
        save_safetensors(tensors, self.entry_path(kind, key), metadata={"source": str(source)})
        with self._lock:
            self._entries[key] = {"kind": kind, "source": str(source.resolve()), "content": content}
            self._used.add(key)
            self._dirty = True

    def remember(self, kind: Kind, key: str, *, source: Path, content: str) -> None:
        """Record an entry found on disk as this run's, from `source` where the manifest lacks it (a pass killed
        before saving it) or names a file that is gone (a moved dataset); one shared by several images keeps
        the one it names, so the manifest is not rewritten at every run."""
        record = {"kind": kind, "source": str(source.resolve()), "content": content}
        with self._lock:
            self._used.add(key)
            known = self._entries.get(key)
            if known is None or not Path(known["source"]).exists():
                self._entries[key] = record
                self._dirty = True

    @property
    def entry_count(self) -> int:
        return len(self._entries)

    def prune(self, current: dict[str, str]) -> int:
        """Delete entries whose source file is gone, and image entries of files in `current` (path -> hash)
        whose content has changed since.

        Entries of files that exist but are not in `current` (another concept, a disabled one) are
        kept: pruning removes only what can never be used again.
        """
        removed = 0
        with self._lock:
            entries = list(self._entries.items())
            protected = self._used | self._leased_by_others()
        for key, entry in entries:
            if key in protected:
                continue
            source = entry["source"]
            known = current.get(source)
            if known is not None:
                stale = entry["kind"] == "image" and known != entry["content"]
            else:
                stale = not Path(source).exists()
            if stale:
                self.entry_path(entry["kind"], key).unlink(missing_ok=True)  # type: ignore[arg-type]
                with self._lock:
                    self._entries.pop(key, None)
                    self._dirty = True
                removed += 1
        return removed

    def publish_lease(self) -> None:
        """List the entries this run uses where other runs' pruning sees them (see the module docstring)."""
        with self._lock:
            text = json.dumps(sorted(self._used))
        atomic_write_text(self._lease_path(), text)
        self._leased = True

    def release_lease(self) -> None:
        if self._leased:
            self._lease_path().unlink(missing_ok=True)
            self._leased = False

    def _lease_path(self) -> Path:
        return self.root / "leases" / f"{process_tag()}.json"

    def _leased_by_others(self) -> set[str]:
        import time

        keys: set[str] = set()
        folder = self.root / "leases"
        for lease in sorted(folder.glob("*.json")) if folder.is_dir() else []:
            if lease == self._lease_path():
                continue
            try:
                expired = time.time() - lease.stat().st_mtime > LEASE_DAYS * 86400
                if tagged_process_gone(lease.stem) or expired:
                    lease.unlink(missing_ok=True)
                    continue
                keys.update(json.loads(lease.read_text(encoding="utf-8")))
            except (OSError, ValueError, TypeError):
                continue
        return keys

    def save_manifest(self) -> None:
        with self._lock:
            if not self._dirty:
                return
            text = json.dumps({"version": MANIFEST_VERSION, "entries": self._entries}, sort_keys=True)
            self._dirty = False
        atomic_write_text(self._manifest_path, text)

    def clear(self) -> None:
        """Delete every entry and the manifest (the explicit `data.clear_cache` option)."""
        for kind in ("image", "text"):
            shutil.rmtree(self.root / kind, ignore_errors=True)
        self._manifest_path.unlink(missing_ok=True)
        with self._lock:
            self._entries = {}
            self._dirty = False
