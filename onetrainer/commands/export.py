"""`onetrainer export CONFIG [-o config.json]`: write a run config as a OneTrainer config."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

EXAMPLES = (
    ("a run config as a OneTrainer config, for its UI", "onetrainer export my-lora.yaml -o my-lora.json"),
    ("with a setting changed on the way", "onetrainer export my-lora.yaml training.epochs=30 -o my-lora.json"),
)


def export(
    config: Annotated[
        Path, typer.Argument(metavar="CONFIG", help="Run config (YAML). It may name a `preset:` to start from.")
    ],
    overrides: Annotated[
        list[str] | None,
        typer.Argument(metavar="KEY=VALUE", help="Overrides with dotted paths, e.g. training.learning_rate=1e-4."),
    ] = None,
    output: Annotated[
        Path | None,
        typer.Option(
            "--output", "-o", metavar="PATH", help="Write the OneTrainer config (JSON) here instead of stdout."
        ),
    ] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace the output if it exists.")] = False,
) -> None:
    """Write a run config as a OneTrainer config (__version 11, concepts and samples inline)."""
    from onetrainer.ui.console import stderr
    from onetrainer.util.atomic import atomic_write_text
    from onetrainer.util.config.loader import load_config
    from onetrainer.util.config.onetrainer_json.exporter import export_onetrainer
    from onetrainer.util.config.onetrainer_json.load import finding_lines
    from onetrainer.util.writable import check_output_file

    if output is not None:
        check_output_file(output, overwrite=overwrite, where="--output")
    resolved = load_config(config, overrides or [], check_paths=False)
    exported, lacking = export_onetrainer(resolved)
    if lacking:
        stderr.print("[yellow]OneTrainer has no place for these settings (not exported):[/]")
        for line in finding_lines(lacking):
            stderr.print(f"  {line}", markup=False, soft_wrap=True)
    text = json.dumps(exported, indent=4, ensure_ascii=False) + "\n"
    if output is None:
        typer.echo(text, nl=False)
        return
    atomic_write_text(output, text)
    stderr.print(f"wrote {output}", markup=False)
