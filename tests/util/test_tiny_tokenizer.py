from __future__ import annotations

import gzip
from pathlib import Path

import pytest
from transformers import CLIPTokenizer

from onetrainer.util.tiny.tokenizer import (
    MERGES_ASSET,
    build_tiny_clip_tokenizer,
    byte_alphabet,
    write_tiny_merges_asset,
)

ASSET = Path(__file__).parents[2] / "onetrainer" / "util" / "tiny" / "assets" / MERGES_ASSET


def test_vocabulary_has_clip_layout_and_special_tokens(tiny_tokenizer: CLIPTokenizer) -> None:
    assert len(tiny_tokenizer) == 1514
    assert tiny_tokenizer.bos_token == "<|startoftext|>"
    assert tiny_tokenizer.eos_token == tiny_tokenizer.pad_token == "<|endoftext|>"
    assert (tiny_tokenizer.bos_token_id, tiny_tokenizer.eos_token_id, tiny_tokenizer.pad_token_id) == (
        1512,
        1513,
        1513,
    )
    assert tiny_tokenizer.model_max_length == 77


def test_byte_alphabet_is_a_permutation_of_256_visible_characters() -> None:
    alphabet = byte_alphabet()
    assert len(set(alphabet)) == 256
    assert alphabet[0] == "!"
    assert not any(char.isspace() for char in alphabet)


def test_prompt_becomes_multi_char_bpe_tokens_framed_by_bos_and_eos(tiny_tokenizer: CLIPTokenizer) -> None:
    ids = tiny_tokenizer("a photo of a cat").input_ids
    tokens = tiny_tokenizer.convert_ids_to_tokens(ids)
    assert tokens == [
        "<|startoftext|>",
        "a</w>",
        "photo</w>",
        "of</w>",
        "a</w>",
        "c",
        "at</w>",
        "<|endoftext|>",
    ]
    # Below the special tokens the ids are OpenAI CLIP's own.
    assert ids[1:4] == [320, 1125, 539]


def test_normalises_case_and_whitespace_like_clip(tiny_tokenizer: CLIPTokenizer) -> None:
    assert tiny_tokenizer("A  Photo\nOF").input_ids == tiny_tokenizer("a photo of").input_ids


def test_pads_with_eos_and_truncates_to_the_context_length(tiny_tokenizer: CLIPTokenizer) -> None:
    short = tiny_tokenizer("a cat", padding="max_length", truncation=True, max_length=77).input_ids
    long = tiny_tokenizer("cat " * 200, padding="max_length", truncation=True, max_length=77).input_ids
    assert len(short) == len(long) == 77
    assert short[-1] == long[-1] == 1513
    assert short[0] == long[0] == 1512


def test_decode_recovers_the_normalised_text(tiny_tokenizer: CLIPTokenizer) -> None:
    ids = tiny_tokenizer("A Photo of a cat, 2 dogs!").input_ids
    assert tiny_tokenizer.decode(ids, skip_special_tokens=True) == "a photo of a cat , 2 dogs !"


def test_round_trips_through_save_pretrained(tiny_tokenizer: CLIPTokenizer, tmp_path: Path) -> None:
    tiny_tokenizer.save_pretrained(tmp_path)
    reloaded = CLIPTokenizer.from_pretrained(tmp_path, local_files_only=True)
    assert len(reloaded) == len(tiny_tokenizer)
    assert reloaded.model_max_length == 77
    prompt = "a painting of a red house"
    assert reloaded(prompt).input_ids == tiny_tokenizer(prompt).input_ids


def test_each_build_is_an_independent_object() -> None:
    first = build_tiny_clip_tokenizer()
    first.add_tokens(["<my-concept>"])
    assert len(build_tiny_clip_tokenizer()) == 1514


def _fake_bpe_source(path: Path, extra_merges: int) -> Path:
    merges = ASSET.read_text(encoding="utf-8").splitlines()[1:]
    lines = ["bpe_simple_vocab_16e6.txt#version: 0.2", *merges, *(["z z"] * extra_merges)]
    with gzip.open(path, "wt", encoding="utf-8") as handle:
        handle.write("\n".join(lines) + "\n")
    return path


def test_merges_asset_regenerates_byte_identically(tmp_path: Path) -> None:
    source = _fake_bpe_source(tmp_path / "bpe.txt.gz", extra_merges=50)
    out = write_tiny_merges_asset(source, tmp_path / "merges.txt")
    assert out.read_bytes() == ASSET.read_bytes()


def test_merges_generator_refuses_a_short_source(tmp_path: Path) -> None:
    source = _fake_bpe_source(tmp_path / "bpe.txt.gz", extra_merges=0)
    with pytest.raises(ValueError, match="fewer than"):
        write_tiny_merges_asset(source, tmp_path / "merges.txt", num_merges=1001)


def test_padded_to_clip_ls_size_it_tokenises_the_same_with_clips_special_ids(tiny_tokenizer: CLIPTokenizer) -> None:
    padded = build_tiny_clip_tokenizer(49408)
    assert len(padded) == 49408
    assert (padded.bos_token_id, padded.eos_token_id, padded.pad_token_id) == (49406, 49407, 49407)
    tiny = tiny_tokenizer("a red circle").input_ids
    assert padded("a red circle").input_ids == [49406, *tiny[1:-1], 49407]
