"""Which save formats fit which kind of output, what `auto` means, and where an output may be written.

A format name alone does not say what is being saved: `diffusers` is a pipeline folder for a full
model and a `learned_embeds` file for an embedding. Asking for a format the kind of output cannot
take (a LoRA as a diffusers folder) is refused with the formats that would work, before anything is
loaded or written.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from onetrainer.util.config.output import SaveDtype, SaveFormat
from onetrainer.util.config.types import WEIGHT_SUFFIXES
from onetrainer.util.detect import EMBEDDING, LORA, MODEL
from onetrainer.util.enums import TrainingMethod
from onetrainer.util.errors import RuntimeFailure, UserError

if TYPE_CHECKING:
    import torch

FORMATS = {
    MODEL: (SaveFormat.DIFFUSERS, SaveFormat.SINGLE_FILE),
    LORA: (SaveFormat.KOHYA, SaveFormat.PEFT),
    EMBEDDING: (SaveFormat.A1111, SaveFormat.DIFFUSERS),
}
METHOD_KINDS = {TrainingMethod.LORA: LORA, TrainingMethod.EMBEDDING: EMBEDDING, TrainingMethod.FULL: MODEL}
"""What a run of each training method saves."""
KIND_NAMES = {MODEL: "a full model", LORA: "a LoRA", EMBEDDING: "an embedding"}
WHY_NOT = {
    (LORA, SaveFormat.DIFFUSERS): "a LoRA is not a full model (merging it into a base model is a separate step); "
    "use --to peft for the layout diffusers' load_lora_weights reads",
    (LORA, SaveFormat.SINGLE_FILE): "a LoRA is not a full model (merging it into a base model is a separate step)",
    (MODEL, SaveFormat.KOHYA): "extracting a LoRA from a full model is not supported",
    (MODEL, SaveFormat.PEFT): "extracting a LoRA from a full model is not supported",
    (MODEL, SaveFormat.A1111): "a full model holds no embedding to export",
    (EMBEDDING, SaveFormat.SINGLE_FILE): "an embedding is a few vectors, not a full model",
}


def parse_format(name: str | SaveFormat) -> SaveFormat:
    try:
        return SaveFormat(getattr(name, "value", name))
    except ValueError:
        from onetrainer.util.suggest import did_you_mean

        names = [f.value for f in SaveFormat]
        raise UserError(
            f"unknown format {name!r}; {did_you_mean(str(name), names)}valid: {', '.join(names)}",
        ) from None


def save_dtype(name: str | SaveDtype | None) -> torch.dtype | None:
    """fp32 / fp16 / bf16 -> the torch dtype written; None keeps each tensor's own dtype."""
    if name is None:
        return None
    try:
        value = SaveDtype(getattr(name, "value", name))
    except ValueError:
        raise UserError(
            f"unknown dtype {name!r}", hint=f"Use one of: {', '.join(d.value for d in SaveDtype)}."
        ) from None
    import torch

    return {SaveDtype.FP32: torch.float32, SaveDtype.FP16: torch.float16, SaveDtype.BF16: torch.bfloat16}[value]


def resolve_format(requested: str | SaveFormat, kind: str, output: Path) -> SaveFormat:
    """`auto` -> kohya for a LoRA, a1111 for an embedding, and for a full model single-file if `output`
    ends in .safetensors, else a diffusers folder. Any other format must suit `kind`."""
    fmt = parse_format(requested)
    if fmt is SaveFormat.AUTO:
        if kind == MODEL:
            return SaveFormat.SINGLE_FILE if output.suffix.lower() == ".safetensors" else SaveFormat.DIFFUSERS
        return FORMATS[kind][0]
    if fmt not in FORMATS[kind]:
        reason = WHY_NOT.get((kind, fmt), f"{fmt.value} is not a format for {KIND_NAMES[kind]}")
        raise UserError(
            f"cannot save {KIND_NAMES[kind]} as {fmt.value}: {reason}",
            hint=f"Formats for {KIND_NAMES[kind]}: {', '.join(f.value for f in FORMATS[kind])}.",
        )
    return fmt


def is_folder_format(fmt: SaveFormat, kind: str) -> bool:
    return kind == MODEL and fmt is SaveFormat.DIFFUSERS


OTHER_WEIGHT_FILES = frozenset({*WEIGHT_SUFFIXES, ".sft", ".gguf", ".onnx"}) - {".safetensors"}
"""Endings of weight files other tools write: a folder output with one is a file name mistaken, not a folder."""


def check_output(
    output: Path,
    fmt: SaveFormat,
    kind: str,
    *,
    overwrite: bool,
    keep: Mapping[str, Path] | None = None,
    read: Mapping[str, Path] | None = None,
) -> None:
    """Refuse an existing output (unless `overwrite`), a path that does not suit the format, and a replacement
    that would lose files: a folder holding more than a diffusers model, one of `keep` (what each path is,
    named with it -> the path: a run's data, workspace and cache) at or inside the output, or one of `read`
    (the models it reads: a conversion's input, a run's base model) inside the output folder. The output may
    be a model it reads: saving over it (continuing a fine-tune, converting in place) is asked for by name,
    and the write is atomic."""
    folder = is_folder_format(fmt, kind)
    if folder and output.suffix.lower() == ".safetensors":
        raise UserError(
            f"a diffusers model is a folder, but the output {output.name} looks like a file",
            hint="Name a folder, or use --to single-file for one .safetensors file.",
        )
    if folder and output.suffix.lower() in OTHER_WEIGHT_FILES:
        raise UserError(
            f"a full model is written as a diffusers folder or one .safetensors file, not as {output.suffix} "
            f"({output.name} would be a folder)",
            hint=f"Use e.g. {output.with_suffix('.safetensors').name} for one file, or a name without an ending for "
            "a folder.",
        )
    if not folder and output.suffix.lower() != ".safetensors":
        raise UserError(
            f"{fmt.value} output is a .safetensors file; {output.name} does not end in .safetensors",
            hint=f"Use e.g. {output.with_suffix('.safetensors').name}.",
        )
    _check_keeps(output, keep or {}, read or {})
    if output.exists():
        if not overwrite:
            raise UserError(f"the output already exists: {output}", hint="Choose another path, or pass --overwrite.")
        if output.is_dir() != folder:
            raise UserError(
                f"the output {output} exists as a {'folder' if output.is_dir() else 'file'}; refusing to replace it "
                f"with a {'folder' if folder else 'file'}",
            )
        foreign = _foreign_entries(output) if folder else []
        if foreign:
            raise UserError(
                f"the output {output} holds what a diffusers model does not ({', '.join(foreign[:5])}"
                f"{', ...' if len(foreign) > 5 else ''}); replacing the folder would delete it",
                hint="Choose a new folder, or a diffusers model folder (one this tool wrote) to replace.",
            )


def _foreign_entries(folder: Path) -> list[str]:
    """What in an existing output folder a saved diffusers model does not hold: anything but `model_index.json`
    and the parts it lists (a clone's `.git`, notes, images: all would go with the folder)."""
    import json

    try:
        index = json.loads((folder / "model_index.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        index = None
    parts = {name for name, value in index.items() if isinstance(value, list)} if isinstance(index, dict) else set()
    own = {"model_index.json", *parts} if index is not None else set()
    return sorted(entry.name for entry in folder.iterdir() if entry.name not in own)


def _check_keeps(output: Path, keep: Mapping[str, Path], read: Mapping[str, Path]) -> None:
    target = output.expanduser().resolve()
    for what, path in {**keep, **read}.items():
        kept = path.expanduser().resolve()
        if target in kept.parents or (kept == target and what in keep):
            raise UserError(f"the output {output} would replace {what}", hint="Write the output somewhere else.")


@contextlib.contextmanager
def write_errors(output: Path) -> Iterator[None]:
    """A failing disk (full, read-only, a file where a folder should be) is a runtime failure, not a bug."""
    try:
        yield
    except OSError as error:
        raise RuntimeFailure(
            f"could not write {output}: {error.strerror or error}",
            where=str(error.filename or output),
            hint="Check free space and permissions; nothing was left half-written.",
        ) from error
