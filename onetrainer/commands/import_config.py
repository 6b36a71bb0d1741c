"""`onetrainer import CONFIG.json [-o run.yaml]`: turn a OneTrainer config into a run config."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

EXAMPLES = (
    (
        "convert a OneTrainer config (and the concept and sample files it names) to a run config",
        "onetrainer import my-lora.json -o my-lora.yaml",
    ),
    ("print the converted config, with what could not be carried over", "onetrainer import my-lora.json"),
)


def import_config(
    config: Annotated[
        Path,
        typer.Argument(
            metavar="CONFIG", help="A OneTrainer training config (JSON), as its UI saves or exports it, or a preset."
        ),
    ],
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", metavar="PATH", help="Write the run config (YAML) here instead of stdout."),
    ] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace the output if it exists.")] = False,
) -> None:
    """Convert a OneTrainer config to a run config; settings it cannot carry over are listed (stderr)."""
    from onetrainer.ui.console import stderr
    from onetrainer.util.atomic import atomic_write_text
    from onetrainer.util.config.onetrainer_json.importer import import_onetrainer
    from onetrainer.util.config.onetrainer_json.load import check_imported, finding_lines, render_yaml
    from onetrainer.util.writable import check_output_file

    if output is not None:
        check_output_file(output, overwrite=overwrite, where="--output")
    imported = import_onetrainer(config)
    check_imported(imported, check_paths=False)
    text = render_yaml(imported)
    if imported.unsupported:
        stderr.print("[yellow]Unsupported OneTrainer settings, not carried over:[/]", highlight=False)
        for line in finding_lines(imported.unsupported):
            stderr.print(f"  {line}", markup=False, soft_wrap=True)
    if imported.notes:
        stderr.print("Notes:")
        for line in finding_lines(imported.notes):
            stderr.print(f"  {line}", markup=False, soft_wrap=True)
    if output is None:
        typer.echo(text, nl=False)
        return
    atomic_write_text(output, text)
    stderr.print(f"wrote {output}", markup=False)
