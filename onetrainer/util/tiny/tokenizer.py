"""Tiny real tokenizers built without the hub: CLIP's byte-level BPE and T5's Unigram.

Tests need a tokenizer that behaves like CLIP's (same normalisation, byte-level BPE, `</w>` word ends,
bos/eos framing, 77-token context) but cannot download one, and a 49408-token vocabulary would make
every tiny text encoder's embedding table dominate its size. OpenAI's merge list is ordered by
frequency, so its first 1000 merges give a small vocabulary in which common words ("a", "photo",
"of") are still single tokens, and whose ids equal the real CLIP ids for every token it has (only the
two special tokens move). The merges ship as a 7 KB package asset; everything else is derived.

T5 (FLUX.1's second text encoder) tokenizes with a SentencePiece Unigram model: case-sensitive pieces,
"▁" marking a word start, no start token, `</s>` closing every text and `<pad>` (id 0) padding. Its
vocabulary of 32k pieces is not redistributable here, so `build_tiny_t5_tokenizer` writes a Unigram
model of its own: the specials, a few common words and every printable ASCII character (so any
caption tokenizes without `<unk>`), with scores that prefer whole words.
"""

from __future__ import annotations

import gzip
import os
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

from onetrainer.util.atomic import atomic_write_text

if TYPE_CHECKING:
    from transformers import CLIPTokenizer, T5Tokenizer

MERGES_ASSET = "tiny-clip-merges.txt"
NUM_TINY_MERGES = 1000
BOS_TOKEN = "<|startoftext|>"
EOS_TOKEN = "<|endoftext|>"
MODEL_MAX_LENGTH = 77
T5_MAX_LENGTH = 512
"""FLUX.1's T5 tokenizer reads up to 512 tokens (its `tokenizer_2/` config)."""
T5_WORDS = (
    "a", "an", "the", "of", "on", "in", "with", "and", "photo", "picture", "painting", "red", "green", "blue",
    "circle", "square", "triangle", "cat", "dog", "person", "woman", "man", "style", "background",
)  # fmt: skip
"""Whole-word pieces of the tiny T5 vocabulary: words the tests' captions use."""
_MERGES_HEADER = "#version: 0.2"


def byte_alphabet() -> list[str]:
    """The 256 printable characters byte-level BPE uses in place of raw bytes, in CLIP's vocab order.

    Byte-level BPE needs every byte to be a visible, non-whitespace character so merges can be written
    as text. Bytes that are already such characters stand for themselves; the rest are shifted past
    U+00FF. The order (self-standing bytes first) fixes the first 256 vocabulary ids.
    """
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    remapped = [byte for byte in range(256) if byte not in set(printable)]
    return [chr(byte) for byte in printable] + [chr(256 + index) for index in range(len(remapped))]


def load_tiny_merges() -> list[tuple[str, str]]:
    """Read the committed merge list (a package asset, so it works from an installed wheel)."""
    text = (resources.files(__package__) / "assets" / MERGES_ASSET).read_text(encoding="utf-8")
    return _parse_merges(text.splitlines())


def _parse_merges(lines: list[str]) -> list[tuple[str, str]]:
    merges: list[tuple[str, str]] = []
    for line in lines:
        if not line or line.startswith("#"):
            continue
        left, right = line.split()
        merges.append((left, right))
    return merges


def build_clip_vocab(merges: list[tuple[str, str]], size: int | None = None) -> dict[str, int]:
    """Lay the vocabulary out as CLIP does: bytes, bytes ending a word, merge results, then specials.

    `size` pads it with unused tokens before the specials, which then take CLIP's last two ids.
    """
    alphabet = byte_alphabet()
    tokens = alphabet + [char + "</w>" for char in alphabet] + [left + right for left, right in merges]
    if size is not None:
        tokens += [f"<|unused-{index}|>" for index in range(size - 2 - len(tokens))]
    tokens += [BOS_TOKEN, EOS_TOKEN]
    return {token: index for index, token in enumerate(tokens)}


def build_tiny_clip_tokenizer(vocab_size: int | None = None) -> CLIPTokenizer:
    """A fresh CLIP tokenizer (1514 tokens, bos=1512, eos=pad=1513) from the committed merges.

    `vocab_size` pads the vocabulary with tokens the merges never produce, so that it fits the
    embedding of a text encoder of real size (49,408 for CLIP-L) whose real vocabulary cannot be had.
    """
    from transformers import CLIPTokenizer

    merges = load_tiny_merges()
    return CLIPTokenizer(
        vocab=build_clip_vocab(merges, vocab_size),
        merges=merges,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=EOS_TOKEN,
        unk_token=EOS_TOKEN,
        model_max_length=MODEL_MAX_LENGTH,
    )


def write_tiny_merges_asset(
    bpe_gz: str | os.PathLike[str],
    out: str | os.PathLike[str] | None = None,
    num_merges: int = NUM_TINY_MERGES,
) -> Path:
    """Regenerate the merges asset from OpenAI's `bpe_simple_vocab_16e6.txt.gz`.

    The source file ships in the open_clip_torch wheel (`pip download --no-deps open_clip_torch`,
    then unzip `open_clip/bpe_simple_vocab_16e6.txt.gz`). Only the first `num_merges` merges are kept.
    """
    with gzip.open(bpe_gz, "rt", encoding="utf-8") as handle:
        lines = handle.read().split("\n")
    merges = _parse_merges(lines[1 : 1 + num_merges])
    if len(merges) != num_merges:
        raise ValueError(f"{bpe_gz} holds {len(merges)} merges, fewer than the {num_merges} requested")
    target = Path(out) if out is not None else Path(__file__).parent / "assets" / MERGES_ASSET
    body = "".join(f"{left} {right}\n" for left, right in merges)
    atomic_write_text(target, f"{_MERGES_HEADER}\n{body}")
    return target


def t5_vocab() -> list[tuple[str, float]]:
    """(piece, log-probability score) in id order: `<pad>`, `</s>`, `<unk>` first as in T5, then words, then
    single characters. Unigram picks the segmentation with the highest total score, so a known word wins
    over its letters; no piece repeats (a repeated piece would silently take the later id)."""
    import string

    words = [("\u2581" + word, -2.0 - index / 100) for index, word in enumerate(T5_WORDS)]
    characters = [(char, -10.0) for char in string.ascii_letters + string.digits + string.punctuation]
    return [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -3.0), *words, *characters]


def build_tiny_t5_tokenizer() -> T5Tokenizer:
    """A fresh T5 Unigram tokenizer (110 pieces, pad=0, eos=1, unk=2) reading up to 512 tokens."""
    from transformers import T5Tokenizer

    return T5Tokenizer(vocab=t5_vocab(), extra_ids=0, model_max_length=T5_MAX_LENGTH)
