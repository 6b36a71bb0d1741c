"""`onetrainer inspect PATH [--json]`: say what a file or folder is and what is in it."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

EXAMPLES = (
    ("what a downloaded file is: model, LoRA or embedding, and for which model", "onetrainer inspect file.safetensors"),
    ("how a folder of images would be bucketed at 768 px", "onetrainer inspect dataset/ --resolution 768"),
    ("a run's state, as JSON for a script", "onetrainer inspect workspace/my-run --json"),
)


def inspect(
    path: Annotated[
        Path,
        typer.Argument(
            metavar="PATH",
            help="A model (diffusers folder, .safetensors, .ckpt), LoRA, embedding, backup, workspace, "
            "run config (.yaml) or image folder.",
        ),
    ],
    json_output: Annotated[bool, typer.Option("--json", help="Print one JSON object (for scripts).")] = False,
    resolution: Annotated[
        int | None,
        typer.Option(min=64, max=8192, help="Image folders: the training resolution to bucket for (default 512)."),
    ] = None,
    model_type: Annotated[
        str | None,
        typer.Option(
            metavar="TYPE",
            help="Image folders: the model family, which sets the bucket size multiple (default sd15).",
        ),
    ] = None,
    recursive: Annotated[bool, typer.Option("--recursive", "-r", help="Image folders: include sub-folders.")] = False,
    batch_size: Annotated[
        int | None, typer.Option(min=1, help="Image folders: the batch size steps are counted for (default 1).")
    ] = None,
    config: Annotated[
        Path | None,
        typer.Option(
            help="Image folders: a run config to read the folder with, so the report is what `train --dry-run` "
            "shows for it; the options above win over its values."
        ),
    ] = None,
) -> None:
    """Describe PATH from headers and metadata, without loading weights (exit code 2: an invalid run config)."""
    import json

    from onetrainer.inspection.dispatch import inspect_path
    from onetrainer.model_loader.family import require_model_type
    from onetrainer.ui.console import stdout
    from onetrainer.ui.inspection import inspection_view
    from onetrainer.util.registry import ModuleKind

    family = require_model_type(model_type, needs=(ModuleKind.SETUP,)) if model_type is not None else None
    result = inspect_path(
        path,
        resolution=resolution,
        model_type=family.value if family is not None else None,
        recursive=recursive,
        batch_size=batch_size,
        config=config,
    )
    if json_output:
        typer.echo(json.dumps(result.to_dict(), indent=2, ensure_ascii=False, default=str))
    else:
        stdout.print(inspection_view(result))
    if result.invalid:
        raise typer.Exit(2)
