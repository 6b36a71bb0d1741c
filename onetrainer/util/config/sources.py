"""What `model.base` and `model.vae` name, checked from names, folder JSONs and safetensors headers alone.

A LoRA given as the base model, an empty folder or a damaged file would otherwise pass `--check` and
`--dry-run` and fail only at load time, after the data scan, naming no key. These checks read no
weights and touch no network: a hub id is left to the load (whether the hub has it cannot be known
here), and so is a pickle (telling a pickled model from a pickled LoRA means unpickling its weights).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from onetrainer.util.config.types import TINY_PREFIX
from onetrainer.util.errors import UserError
from onetrainer.util.keymaps.ldm_tables import VAE_PREFIX

if TYPE_CHECKING:
    from onetrainer.util.detect import Detection

BASE_EXPECTED = (
    "expected a base model: a diffusers model folder, a .safetensors/.ckpt model file, a hub id or tiny:<name>"
)
VAE_EXPECTED = "expected a VAE: a diffusers VAE (or pipeline) folder, a .safetensors/.ckpt VAE file or a hub id"


def check_base_source(text: str) -> None:
    """Raise `ValueError` saying what `text` is when it cannot be a base model, judged without loading it."""
    from onetrainer.util.detect import MODEL

    if text.startswith(TINY_PREFIX):
        _check_tiny_name(text)
        return
    path = Path(text).expanduser()
    if not path.exists() or _is_pickle(path, BASE_EXPECTED):
        return
    detection = _detect(path, BASE_EXPECTED)
    if detection.kind != MODEL:
        noun = "a LoRA" if detection.kind == "lora" else "an embedding"
        raise ValueError(f"this is {noun}, not a base model ({detection.description}); {BASE_EXPECTED}")


def check_vae_source(text: str) -> None:
    """Raise `ValueError` when `text` cannot be a VAE: a tiny model, a folder without a VAE config, or a
    weights file that is unreadable or holds no VAE encoder or decoder tensor."""
    if text.startswith(TINY_PREFIX):
        raise ValueError(f"a tiny model cannot serve as a VAE override; {VAE_EXPECTED}")
    path = Path(text).expanduser()
    if not path.exists():
        return
    if path.is_dir():
        if not ((path / "config.json").is_file() or (path / "vae" / "config.json").is_file()):
            raise ValueError(f"this folder is not a diffusers VAE (no config.json nor vae/config.json); {VAE_EXPECTED}")
        return
    if _is_pickle(path, VAE_EXPECTED):
        return
    keys = [key.removeprefix(VAE_PREFIX) for key in _header_keys(path, VAE_EXPECTED)]
    if not any(key.startswith(("encoder.", "decoder.")) for key in keys):
        shown = ", ".join(keys[:3]) + (" ..." if len(keys) > 3 else "")
        raise ValueError(f"this file holds no VAE encoder or decoder tensors ({shown or 'no tensors'}); {VAE_EXPECTED}")


def _check_tiny_name(text: str) -> None:
    from onetrainer.util.family import tiny_names

    if text.removeprefix(TINY_PREFIX) not in tiny_names():
        raise ValueError(f"unknown tiny model; tiny models: {', '.join(TINY_PREFIX + n for n in tiny_names())}")


@contextlib.contextmanager
def _refused(expected: str) -> Iterator[None]:
    """A reader's `UserError` as the validation error reported at the key, with what the key expects."""
    try:
        yield
    except UserError as error:
        raise ValueError(f"{error.message}; {expected}") from None


def _is_pickle(path: Path, expected: str) -> bool:
    """Whether the file is a PyTorch checkpoint; a file that is neither that nor safetensors is refused."""
    from onetrainer.util.detect import PICKLE, sniff_container

    if path.is_dir():
        return False
    with _refused(expected):
        return sniff_container(path) == PICKLE


def _detect(path: Path, expected: str) -> Detection:
    from onetrainer.util.detect import detect_path

    with _refused(expected):
        return detect_path(path)


def _header_keys(path: Path, expected: str) -> list[str]:
    from onetrainer.util.safetensors_meta import read_safetensors_header

    with _refused(expected):
        return list(read_safetensors_header(path)[1])
