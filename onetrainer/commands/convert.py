"""`onetrainer convert INPUT OUTPUT --to FORMAT`: rewrite a model, LoRA or embedding in another format."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from onetrainer.commands.options import DtypeKeep, ModelType, keys_as_options
from onetrainer.util.devices import WeightsDtype
from onetrainer.util.enums import PredictionType

EXAMPLES = (
    (
        "a diffusers folder as one original .safetensors file (A1111, ComfyUI)",
        "onetrainer convert my-model/ my-model.safetensors",
    ),
    (
        "a kohya LoRA as a PEFT (diffusers) LoRA in fp16",
        "onetrainer convert my-lora.safetensors my-lora-peft.safetensors --to peft --dtype fp16",
    ),
    (
        "a v-prediction checkpoint that does not say what it predicts, as a diffusers folder",
        "onetrainer convert model-768-v.ckpt model-768-v/ --prediction-type v_prediction",
    ),
)
INPUT_WHERE = {"model.base": "the INPUT argument", "model.config": "--config", "model.tokenizer": "--tokenizer"}
"""The loaders name their sources by config key; here they come from these arguments."""


def convert(
    input: Annotated[
        str,
        typer.Argument(
            metavar="INPUT",
            help="A model, LoRA or embedding: a file, a diffusers folder, a hub id or tiny:<family>.",
        ),
    ],
    output: Annotated[
        Path, typer.Argument(metavar="OUTPUT", help="The file (.safetensors) or folder (diffusers) to write.")
    ],
    to: Annotated[
        str,
        typer.Option(
            "--to",
            metavar="FORMAT",
            help="diffusers or single-file (models), kohya or peft (LoRAs), a1111 or diffusers (embeddings); "
            "auto: kohya, a1111, or single-file/diffusers by the output's suffix.",
        ),
    ] = "auto",
    dtype: DtypeKeep = WeightsDtype.AUTO,
    model_type: ModelType = None,
    config: Annotated[
        str | None,
        typer.Option(
            metavar="PATH",
            help="Architecture of a single-file input, or of the model a kohya LoRA is for where its names "
            "depend on it (a diffusers folder, hub id or tiny:<family>); default: the family's released model.",
        ),
    ] = None,
    tokenizer: Annotated[
        str | None,
        typer.Option(metavar="PATH", help="Tokenizer for a single-file input written as a diffusers folder."),
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
    from rich.markup import escape

    from onetrainer.model_loader.conversion_source import open_conversion_source
    from onetrainer.model_loader.family import parse_model_type
    from onetrainer.model_saver.convert import lora_warnings, write_conversion
    from onetrainer.model_saver.formats import parse_format
    from onetrainer.ui.console import stderr, stdout
    from onetrainer.ui.file_progress import per_file_progress
    from onetrainer.util.registry import ModuleKind
    from onetrainer.util.threads import apply_threads
    from onetrainer.util.writable import check_writable

    fmt = parse_format(to)
    apply_threads()
    family = parse_model_type(model_type, needs=(ModuleKind.LOADER, ModuleKind.SAVER))
    check_writable(output, where="the OUTPUT argument")
    apply_threads()
    cast = None if dtype is WeightsDtype.AUTO else dtype.value
    with (
        keys_as_options(INPUT_WHERE),
        open_conversion_source(
            input, model_type=family, config=config, tokenizer=tokenizer, prediction_type=prediction_type
        ) as source,
    ):
        stderr.print(f"input: {source.detection.description}")
        with per_file_progress("tensors") as update:
            used, path = write_conversion(
                source,
                output,
                to=fmt,
                dtype=cast,
                overwrite=overwrite,
                progress=update,
                reads=[input, *([config] if config else [])],
            )
        for message in lora_warnings(source, used):
            stderr.print(f"[yellow]warning:[/] {escape(message)}", soft_wrap=True)
    stdout.print(f"wrote {path} ({used.value})")
