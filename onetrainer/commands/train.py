"""`onetrainer train CONFIG [KEY=VALUE ...]`: validate a run config and train (or check, report, cache)."""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:
    from onetrainer.util.config.schema import TrainConfig

EXAMPLES = (
    ("the demo: a LoRA on the built-in tiny model, on the CPU", "onetrainer train presets/demo.yaml"),
    ("check a config and see it resolved, without training", "onetrainer train my-lora.yaml --check"),
    (
        "train with two settings changed from the command line",
        "onetrainer train my-lora.yaml training.learning_rate=5e-5 training.epochs=20",
    ),
    ("continue an interrupted run from its newest backup", "onetrainer train my-lora.yaml --resume last"),
    (
        "train a OneTrainer config (JSON) as it is, even with settings onetrainer cannot honour",
        "onetrainer train my-onetrainer-lora.json --allow-unsupported",
    ),
)


def train(
    config: Annotated[
        Path,
        typer.Argument(
            metavar="CONFIG",
            help="Run config (YAML; it may name a `preset:` to start from), or a OneTrainer config (JSON).",
        ),
    ],
    overrides: Annotated[
        list[str] | None,
        typer.Argument(metavar="KEY=VALUE", help="Overrides with dotted paths, e.g. training.learning_rate=1e-4."),
    ] = None,
    resume: Annotated[
        str | None,
        typer.Option(
            "--resume", metavar="last|PATH", help="Continue from the newest backup (last) or a backup/workspace folder."
        ),
    ] = None,
    check: Annotated[bool, typer.Option("--check", help="Validate and print the resolved config, then exit.")] = False,
    dry_run: Annotated[
        bool,
        typer.Option(
            "--dry-run",
            help="Report what the data would train on (concepts, buckets, steps) and the estimated peak GPU memory, "
            "then exit.",
        ),
    ] = False,
    cache_only: Annotated[bool, typer.Option("--cache-only", help="Fill the data cache, then exit.")] = False,
    json_lines: Annotated[
        bool, typer.Option("--json", help="Print one JSON object per line on stdout instead of the progress display.")
    ] = False,
    allow_unsupported: Annotated[
        bool,
        typer.Option(
            "--allow-unsupported",
            help="OneTrainer configs: train without the settings onetrainer cannot honour (they are listed).",
        ),
    ] = False,
) -> None:
    """Train a model from a config file (defaults < preset < file < overrides)."""
    from onetrainer.data_loader.placeholders import check_placeholders
    from onetrainer.util.config.loader import dump_config, load_config
    from onetrainer.util.config.onetrainer_json.files import is_onetrainer_config
    from onetrainer.util.errors import UserError

    if sum((check, dry_run, cache_only)) > 1:
        raise UserError("--check, --dry-run and --cache-only each end the command early: choose one")
    if resume is not None and (check or dry_run or cache_only):
        raise UserError("--resume starts training; it does not combine with --check, --dry-run or --cache-only")
    if is_onetrainer_config(config):
        resolved = _load_onetrainer(config, overrides or [], allow_unsupported=allow_unsupported)
    else:
        resolved = load_config(config, overrides or [])
    check_placeholders(resolved)
    if check:
        typer.echo(dump_config(resolved), nl=False)
        return
    if dry_run:
        _dry_run(resolved, json_lines=json_lines)
        return

    from onetrainer.trainer.components import build_parts
    from onetrainer.ui.progress import open_display
    from onetrainer.util.threads import apply_threads

    threads = apply_threads(resolved.training.threads, workers=resolved.data.workers)
    with open_display(json_lines=json_lines) as display:
        display({"event": "status", "message": threads.describe()})
        if cache_only:
            from onetrainer.trainer.prepare import fill_cache_only

            fill_cache_only(resolved, build=build_parts, progress=display)
            return
        from onetrainer.trainer.loop import train as run_training

        result = run_training(
            resolved,
            build=build_parts,
            resume=resume,
            progress=display,
            command=shlex.join(["onetrainer", "train", str(config), *(overrides or [])]),
        )
    if not json_lines and result.output is not None:
        from onetrainer.ui.console import stderr

        stderr.print(f"[green]Done.[/] Trained {result.step} steps; output: [bold]{result.output}[/]")


def _load_onetrainer(config: Path, overrides: list[str], *, allow_unsupported: bool) -> TrainConfig:
    """A OneTrainer config, imported in memory; the settings left out (if allowed) are listed on stderr."""
    from onetrainer.ui.console import stderr
    from onetrainer.util.config.onetrainer_json.load import finding_lines, load_onetrainer_config

    resolved, imported = load_onetrainer_config(config, overrides, allow_unsupported=allow_unsupported)
    if imported.unsupported:
        stderr.print("[yellow]Training without these unsupported OneTrainer settings:[/]")
        for line in finding_lines(imported.unsupported):
            stderr.print(f"  {line}", markup=False, soft_wrap=True)
    return resolved


def _dry_run(config: TrainConfig, *, json_lines: bool) -> None:
    from onetrainer.model_setup.estimate import estimate_memory
    from onetrainer.trainer.components import data_report
    from onetrainer.ui.console import stdout
    from onetrainer.ui.tables import memory_table
    from onetrainer.util.errors import UserError

    report = data_report(config, progress=lambda event: None)
    try:
        memory: Any = estimate_memory(config)
    except UserError as error:  # the data report stands on its own; say why memory is not estimated
        memory = error
    if json_lines:
        estimate = {"error": memory.message} if isinstance(memory, UserError) else memory.to_dict()
        sys.stdout.write(json.dumps({"event": "report", **report.to_dict(), "memory": estimate}) + "\n")
    else:
        stdout.print(report)
        if isinstance(memory, UserError):
            stdout.print(f"[yellow]Peak GPU memory not estimated:[/] {memory.message}", markup=True)
        else:
            stdout.print(memory_table(memory))
    report.require_trainable()
