"""Tokenizers: whether one fits its text encoder, and where a single file's comes from.

transformers 5 returns a 2-token tokenizer without any error when a hub tokenizer is not cached and
the hub is offline, so every candidate is checked against the text encoder it will feed: a tokenizer
fits when it has one token per row of the encoder's embedding table, the table's padding aside (T5-XXL's
32,128 rows hold 32,100 tokens: tables are padded to a multiple of 128; see `TABLE_PADDING`). A fixed minimum size would
refuse valid small vocabularies and say nothing about a tokenizer that belongs to another encoder.

A single file holds no tokenizer: it comes from an explicit path or hub id, else from the architecture
source if it has one, else from the family's known hub repos in the local Hugging Face cache, else
(online) from the hub, in that order; the first that fits wins. Each text encoder's tokenizer is looked
for in its own subfolder (`tokenizer`, `tokenizer_2`), else at a repo's root; wherever it is found, it pads
with the token the encoder was trained with (`Component.pad_token`: OpenCLIP's "!"), as A1111 and ComfyUI
pad whatever the tokenizer files say, since padding positions are part of the conditioning. Each is
read with the tokenizer class the architecture's `model_index.json` names for it (a T5 encoder's is not
CLIP's), CLIP's where it names none.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

from onetrainer.model_loader.architecture import Architecture
from onetrainer.model_loader.hub import HUB, TINY, hub_offline, source_kind
from onetrainer.util.errors import UserError
from onetrainer.util.missing import model_unavailable

if TYPE_CHECKING:
    from transformers import CLIPTokenizer

    from onetrainer.util.family import FamilySpec


TABLE_PADDING = 128
"""Rows an embedding table may have past its tokenizer's last token: tables are padded to a multiple of up to
128 rows for faster kernels (T5's), never by more, and never by more than 1 % of a real vocabulary (so the
2-token tokenizer of an offline miss never fits a small table)."""


def tokenizer_mismatch(tokenizer: CLIPTokenizer, vocab_size: int) -> str | None:
    """Why `tokenizer` cannot feed a text encoder with `vocab_size` embedding rows, or None if it can."""
    count = len(tokenizer)
    if vocab_size - count > min(TABLE_PADDING - 1, vocab_size // 100):
        return f"has {count:,} tokens but the text encoder has {vocab_size:,}: it came back empty or incomplete"
    if count > vocab_size:
        return f"has {count:,} tokens, more than the text encoder's {vocab_size:,}: it belongs to another model"
    return None


def load_tokenizer(
    explicit: str | None, architecture: Architecture, spec: FamilySpec, encoder: str = "text_encoder"
) -> CLIPTokenizer:
    """The first tokenizer that fits the architecture's `encoder`, from: `explicit`, the architecture
    source, the family's hub repos in the HF cache, then on the hub."""
    vocab_size = int(architecture.configs[encoder]["vocab_size"])
    pad_token = spec.component(encoder).pad_token
    folder = spec.component(encoder).tokenizer or "tokenizer"
    cls = _tokenizer_class(architecture, folder)
    if explicit is not None:
        found, _ = _explicit_tokenizer(explicit, vocab_size, folder, cls)
        return _with_pad(found, pad_token)
    if architecture.tiny:
        return _tiny_tokenizer(cls)
    tried: list[str] = []
    candidates = ([(architecture.tokenizer_at[0], folder)] if architecture.tokenizer_at else []) + [
        (repo, subfolder) for repo in spec.hub_ids for subfolder in (None, folder)
    ]
    for local_only in (True, False):
        if not local_only and hub_offline():
            break
        for location, subfolder in candidates:
            tokenizer = _try_tokenizer(location, subfolder, vocab_size, cls, local_only=local_only)
            if tokenizer is not None:
                return _with_pad(tokenizer, pad_token)
            tried.append(_describe(location, subfolder) + (" (cache)" if local_only else " (hub)"))
    raise UserError(
        f"no tokenizer is reachable that fits this single-file model's text encoder ({vocab_size:,} tokens)",
        hint="Pass a tokenizer folder or hub id (model.tokenizer / --tokenizer), or a diffusers folder with a "
        f"tokenizer/ subfolder as the config (--config). Tried: {', '.join(tried) or 'nothing'}"
        + (". The hub was not tried: HF_HUB_OFFLINE is set." if hub_offline() else "."),
    )


def _with_pad(tokenizer: CLIPTokenizer, pad_token: str | None) -> CLIPTokenizer:
    """`tokenizer` padding with `pad_token` (a token every CLIP vocabulary holds), when the encoder needs one."""
    if pad_token is not None and tokenizer.pad_token != pad_token:
        if pad_token not in tokenizer.get_vocab():
            raise UserError(f"the tokenizer has no {pad_token!r} token to pad with, as this text encoder needs")
        tokenizer.pad_token = pad_token
    return tokenizer


def _describe(location: str, subfolder: str | None) -> str:
    return f"{location}/{subfolder}" if subfolder else location


def _tokenizer_class(architecture: Architecture, folder: str) -> Any:
    """The class the architecture names for the tokenizer in `folder` (transformers' only), else CLIP's."""
    library, name = architecture.classes.get(folder, ("transformers", "CLIPTokenizer"))
    return getattr(importlib.import_module("transformers"), name if library == "transformers" else "CLIPTokenizer")


def _tiny_tokenizer(cls: Any) -> Any:
    from onetrainer.util.tiny.tokenizer import build_tiny_clip_tokenizer, build_tiny_t5_tokenizer

    return build_tiny_t5_tokenizer() if cls.__name__.startswith("T5") else build_tiny_clip_tokenizer()


def _try_tokenizer(
    location: str, subfolder: str | None, vocab_size: int, cls: Any, *, local_only: bool
) -> CLIPTokenizer | None:
    tokenizer = _read_tokenizer(location, subfolder, cls, local_only=local_only)
    return tokenizer if tokenizer is not None and tokenizer_mismatch(tokenizer, vocab_size) is None else None


def _read_tokenizer(location: str, subfolder: str | None, cls: Any, *, local_only: bool) -> CLIPTokenizer | None:
    try:
        tokenizer: CLIPTokenizer = cls.from_pretrained(location, subfolder=subfolder or "", local_files_only=local_only)
    except (OSError, ValueError):
        return None
    return tokenizer


def _explicit_tokenizer(source: str, vocab_size: int, folder: str, cls: Any) -> tuple[CLIPTokenizer, str | None]:
    """(the tokenizer, the subfolder it came from): the encoder's own `folder`, "tokenizer", or the root."""
    kind = source_kind(source, where="model.tokenizer")
    if kind == TINY:
        tiny = _tiny_tokenizer(cls)
        mismatch = tokenizer_mismatch(tiny, vocab_size)
        if mismatch is not None:
            raise UserError(f"the tiny tokenizer {mismatch}", hint="Use tiny: tokenizers with tiny: models only.")
        return tiny, folder
    if kind == HUB:
        mismatch = None
        for subfolder in dict.fromkeys((None, folder, "tokenizer")):
            tokenizer = _read_tokenizer(source, subfolder, cls, local_only=hub_offline())
            if tokenizer is None:
                continue
            mismatch = tokenizer_mismatch(tokenizer, vocab_size)
            if mismatch is None:
                return tokenizer, subfolder
        if mismatch is not None:
            raise UserError(
                f"the tokenizer {source} {mismatch}", where="model.tokenizer", hint="Pass this model's tokenizer."
            )
        if hub_offline():
            raise model_unavailable(source, where="model.tokenizer", what="tokenizer")
        raise UserError(
            f"{source} has no CLIP tokenizer of {vocab_size:,} tokens (the text encoder's)",
            where="model.tokenizer",
            hint="Pass the tokenizer of this model: a local tokenizer folder, or a hub repository with a CLIP "
            "tokenizer (or a tokenizer/ folder).",
        )
    path = Path(source).expanduser()
    subfolder = next((name for name in dict.fromkeys((folder, "tokenizer")) if (path / name).is_dir()), None)
    location = path / subfolder if subfolder else path
    tokenizer = _try_tokenizer(str(location), None, vocab_size, cls, local_only=True) if location.is_dir() else None
    if tokenizer is None:
        raise UserError(
            f"no CLIP tokenizer of {vocab_size:,} tokens (the text encoder's) in {path}",
            hint="Pass a folder holding this model's tokenizer.json or vocab.json + merges.txt (or its pipeline "
            "folder).",
        )
    return tokenizer, subfolder
