"""`onetrainer convert INPUT OUTPUT --to FORMAT`: rewrite a model, LoRA or embedding in another format."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from onetrainer.util.enums import PredictionType


def convert(
    input: Annotated[
        str, typer.Argument(help="A model, LoRA or embedding: a file, a diffusers folder, a hub id or tiny:<family>.")
    ],
    output: Annotated[Path, typer.Argument(help="The file (.safetensors) or folder (diffusers) to write.")],
    to: Annotated[
        str,
        typer.Option(
            "--to",
            help="diffusers or single-file (models), kohya or peft (LoRAs), a1111 or diffusers (embeddings); "
            "auto: kohya, a1111, or single-file/diffusers by the output's suffix.",
        ),
    ] = "auto",
    dtype: Annotated[str | None, typer.Option(help="fp32, fp16 or bf16 (default: keep each tensor's dtype).")] = None,
    model_type: Annotated[
        str | None, typer.Option("--model-type", help="sd15 or sd2 (default: detect from the input).")
    ] = None,
    config: Annotated[
        str | None,
        typer.Option(
            help="Architecture of a single-file input (diffusers folder or hub id); default: shipped configs."
        ),
    ] = None,
    tokenizer: Annotated[
        str | None, typer.Option(help="Tokenizer for a single-file input written as a diffusers folder.")
    ] = None,
    prediction_type: Annotated[
        PredictionType,
        typer.Option(
            help="epsilon or v_prediction: what the model predicts, for SD 2.x files that do not say "
            "(auto: the file's marker or scheduler config; an unmarked SD 2.x file gets the 768-v architecture)."
        ),
    ] = PredictionType.AUTO,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace the output if it exists.")] = False,
) -> None:
    """Convert between formats, streaming tensor by tensor (a checkpoint is never held twice in memory)."""
    from onetrainer.model_loader.conversion_source import open_conversion_source
    from onetrainer.model_loader.family import parse_model_type
    from onetrainer.model_saver.convert import write_conversion
    from onetrainer.model_saver.formats import parse_format
    from onetrainer.ui.console import stderr, stdout
    from onetrainer.ui.file_progress import per_file_progress
    from onetrainer.util.threads import apply_threads

    fmt = parse_format(to)
    apply_threads()
    with open_conversion_source(
        input,
        model_type=parse_model_type(model_type),
        config=config,
        tokenizer=tokenizer,
        prediction_type=prediction_type,
    ) as source:
        stderr.print(f"input: {source.detection.description}")
        with per_file_progress("tensors") as update:
            used, path = write_conversion(source, output, to=fmt, dtype=dtype, overwrite=overwrite, progress=update)
    stdout.print(f"wrote {path} ({used.value})")
