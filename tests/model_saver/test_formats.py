"""Format names: what `auto` means, which formats fit which output, and where outputs may go."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from onetrainer.model_saver.formats import check_output, resolve_format, save_dtype
from onetrainer.util.config.output import SaveFormat
from onetrainer.util.detect import EMBEDDING, LORA, MODEL
from onetrainer.util.errors import UserError


@pytest.mark.parametrize(
    ("kind", "output", "expected"),
    [
        (LORA, "x.safetensors", SaveFormat.KOHYA),
        (EMBEDDING, "x.safetensors", SaveFormat.A1111),
        (MODEL, "x.safetensors", SaveFormat.SINGLE_FILE),
        (MODEL, "x.SAFETENSORS", SaveFormat.SINGLE_FILE),
        (MODEL, "out/model", SaveFormat.DIFFUSERS),
    ],
)
def test_auto_format(kind: str, output: str, expected: SaveFormat) -> None:
    assert resolve_format("auto", kind, Path(output)) is expected


@pytest.mark.parametrize(
    ("kind", "fmt", "message"),
    [
        (LORA, "diffusers", "use --to peft"),
        (LORA, "single-file", "not a full model"),
        (LORA, "a1111", "not a format for a LoRA"),
        (MODEL, "kohya", "extracting a LoRA"),
        (EMBEDDING, "peft", "not a format for an embedding"),
    ],
)
def test_impossible_conversions_are_refused_with_the_working_formats(kind: str, fmt: str, message: str) -> None:
    with pytest.raises(UserError, match=message) as info:
        resolve_format(fmt, kind, Path("x.safetensors"))
    assert "Formats for" in (info.value.hint or "")


def test_unknown_format_suggests_the_closest() -> None:
    with pytest.raises(UserError, match="did you mean 'kohya'"):
        resolve_format("kohay", LORA, Path("x.safetensors"))


def test_dtypes() -> None:
    assert save_dtype("bf16") is torch.bfloat16
    assert save_dtype(None) is None
    with pytest.raises(UserError, match="unknown dtype"):
        save_dtype("int8")


def test_output_checks(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"does not end in \.safetensors"):
        check_output(tmp_path / "lora.pt", SaveFormat.KOHYA, LORA, overwrite=False)
    with pytest.raises(UserError, match="is a folder"):
        check_output(tmp_path / "model.safetensors", SaveFormat.DIFFUSERS, MODEL, overwrite=False)
    existing = tmp_path / "lora.safetensors"
    existing.write_bytes(b"")
    with pytest.raises(UserError, match="already exists"):
        check_output(existing, SaveFormat.KOHYA, LORA, overwrite=False)
    check_output(existing, SaveFormat.KOHYA, LORA, overwrite=True)
    folder = tmp_path / "odd.safetensors"
    folder.mkdir()
    with pytest.raises(UserError, match="refusing to replace it"):
        check_output(folder, SaveFormat.SINGLE_FILE, MODEL, overwrite=True)


def test_a_folder_output_replaces_only_a_diffusers_model_or_an_empty_folder(tmp_path: Path) -> None:
    """Replacing a folder deletes what it holds: only a diffusers model and nothing else (or nothing) may go."""
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "keep.txt").write_text("mine")
    with pytest.raises(UserError, match=r"holds what a diffusers model does not \(keep.txt\)"):
        check_output(notes, SaveFormat.DIFFUSERS, MODEL, overwrite=True)
    model = tmp_path / "model"
    (model / "unet").mkdir(parents=True)
    (model / "model_index.json").write_text('{"_class_name": "StableDiffusionPipeline", "unet": ["diffusers", "U"]}')
    check_output(model, SaveFormat.DIFFUSERS, MODEL, overwrite=True)
    (model / ".git").mkdir()
    (model / "README.md").write_text("a clone")
    with pytest.raises(UserError, match=r"\(\.git, README\.md\)"):
        check_output(model, SaveFormat.DIFFUSERS, MODEL, overwrite=True)
    empty = tmp_path / "empty"
    empty.mkdir()
    check_output(empty, SaveFormat.DIFFUSERS, MODEL, overwrite=True)
    with pytest.raises(UserError, match=r"not as \.ckpt"):
        check_output(tmp_path / "model.ckpt", SaveFormat.DIFFUSERS, MODEL, overwrite=False)


def test_an_output_at_or_around_what_is_kept_is_refused(tmp_path: Path) -> None:
    """What is kept (data, workspace) may be neither the output nor inside it; a model that is read may be the
    output (saved over by name, atomically), not inside it."""
    model = tmp_path / "model"
    (model / "unet").mkdir(parents=True)
    (model / "model_index.json").write_text('{"unet": ["diffusers", "U"]}')
    inside = model / "unet" / "weights.safetensors"
    with pytest.raises(UserError, match="would replace the input"):
        check_output(model, SaveFormat.DIFFUSERS, MODEL, overwrite=True, read={"the input": inside})
    check_output(model, SaveFormat.DIFFUSERS, MODEL, overwrite=True, read={"the input": model})
    with pytest.raises(UserError, match="would replace the workspace"):
        check_output(model, SaveFormat.DIFFUSERS, MODEL, overwrite=True, keep={"the workspace": model})
    single = tmp_path / "base.safetensors"
    check_output(single, SaveFormat.SINGLE_FILE, MODEL, overwrite=True, read={"the base": single})
