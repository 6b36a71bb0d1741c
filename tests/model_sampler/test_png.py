"""Sample PNGs: their text chunks, and where a batch of them is written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from onetrainer.model_sampler.png import GenerationInfo, output_paths, save_png
from onetrainer.util.errors import UserError


def _info(**changes: object) -> GenerationInfo:
    fields = {
        "prompt": "a cat",
        "negative_prompt": "blurry",
        "steps": 20,
        "cfg": 7.5,
        "seed": 42,
        "width": 64,
        "height": 96,
        "scheduler": "dpm++2m-karras",
        "model": "tiny:sd15",
        "loras": [("style.safetensors", 0.8)],
        "embeddings": ["<tok>"],
    }
    return GenerationInfo(**{**fields, **changes})


def test_text_chunks_in_a1111_layout_and_json(tmp_path: Path) -> None:
    path = tmp_path / "x.png"
    save_png(Image.new("RGB", (8, 8)), path, _info())
    text = Image.open(path).text
    assert text["parameters"] == (
        "a cat\nNegative prompt: blurry\nSteps: 20, Sampler: DPM++ 2M Karras, CFG scale: 7.5, Seed: 42, "
        'Size: 64x96, Model: tiny:sd15, LoRAs: "style.safetensors:0.8", Embeddings: "<tok>"'
    )
    data = json.loads(text["onetrainer"])
    assert data["seed"] == 42
    assert data["scheduler"] == "dpm++2m-karras"
    assert data["loras"] == [["style.safetensors", 0.8]]


def test_non_latin_prompts_survive(tmp_path: Path) -> None:
    path = tmp_path / "x.png"
    save_png(Image.new("RGB", (8, 8)), path, _info(prompt="猫の写真", negative_prompt=""))
    assert Image.open(path).text["parameters"].startswith("猫の写真\nSteps: 20")


def test_file_output_and_numbered_batch(tmp_path: Path) -> None:
    assert output_paths(tmp_path / "a.png", [1]) == [tmp_path / "a.png"]
    assert output_paths(tmp_path / "a.png", [1, 2]) == [tmp_path / "a-01.png", tmp_path / "a-02.png"]


def test_existing_file_needs_overwrite(tmp_path: Path) -> None:
    (tmp_path / "a.png").write_bytes(b"")
    with pytest.raises(UserError, match="output exists"):
        output_paths(tmp_path / "a.png", [1])
    assert output_paths(tmp_path / "a.png", [1], overwrite=True) == [tmp_path / "a.png"]


def test_folder_output_continues_numbering(tmp_path: Path) -> None:
    assert output_paths(tmp_path / "new", [7, 8]) == [
        tmp_path / "new" / "00000-7.png",
        tmp_path / "new" / "00001-8.png",
    ]
    (tmp_path / "00004-1.png").write_bytes(b"")
    (tmp_path / "notes.png").write_bytes(b"")
    assert output_paths(tmp_path, [3]) == [tmp_path / "00005-3.png"]


def test_other_image_suffixes_are_refused(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="PNG"):
        output_paths(tmp_path / "a.jpg", [1])
