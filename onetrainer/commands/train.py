"""`onetrainer train CONFIG [KEY=VALUE ...]`: validate a run config and train (or check, report, cache)."""

from __future__ import annotations

import contextlib
import json
import shlex
import sys
from collections.abc import Callable
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
    ("train data-parallel on the 4 GPUs of this machine (starts torchrun)", "onetrainer train my-lora.yaml --gpus 4"),
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
    gpus: Annotated[
        int | None,
        typer.Option(
            "--gpus",
            min=1,
            metavar="N",
            help="Train on N GPUs of this machine (starts torchrun with one process per GPU; "
            "training.batch_size is per GPU). With training.device=cpu: N CPU processes.",
        ),
    ] = None,
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
    if gpus is not None and cache_only:
        raise UserError("--cache-only fills the cache in one process; leave out --gpus")
    if is_onetrainer_config(config):
        resolved = _load_onetrainer(config, overrides or [], allow_unsupported=allow_unsupported)
    else:
        resolved = load_config(config, overrides or [])
    check_placeholders(resolved)
    if check or dry_run:
        _print_warnings(resolved)
    if check:
        if json_lines:
            typer.echo(json.dumps({"event": "config", "config": resolved.model_dump(mode="json")}))
        else:
            typer.echo(dump_config(resolved), nl=False)
        return
    if dry_run:
        _dry_run(resolved, json_lines=json_lines, world_size=gpus or 1)
        return
    command = ["onetrainer", "train", str(config), *(overrides or [])]
    if gpus is not None and gpus > 1:
        from onetrainer.trainer.launch import launch_ranks

        _check_launch(resolved, gpus, resume)
        flags = [
            *(["--resume", resume] if resume is not None else []),
            *(["--json"] if json_lines else []),
            *(["--allow-unsupported"] if allow_unsupported else []),
        ]
        code = launch_ranks(gpus, [str(config), *(overrides or []), *flags], command=[*command, "--gpus", str(gpus)])
        raise typer.Exit(code)

    from onetrainer.trainer.components import build_parts
    from onetrainer.trainer.distributed import launched_rank, run_command
    from onetrainer.util.threads import apply_threads

    threads = apply_threads(resolved.training.threads, workers=resolved.data.workers)
    with _display(json_lines=json_lines, main=launched_rank() == 0) as display:
        display({"event": "status", "message": threads.describe()})
        if cache_only:
            from onetrainer.trainer.prepare import fill_cache_only

            fill_cache_only(resolved, build=build_parts, progress=display)
            return
        from onetrainer.trainer.divergence import TrainingDiverged
        from onetrainer.trainer.loop import train as run_training
        from onetrainer.util.errors import Interrupted

        try:
            result = run_training(
                resolved,
                build=build_parts,
                resume=resume,
                progress=display,
                command=run_command(shlex.join(command)),
            )
        except (Interrupted, TrainingDiverged) as error:
            if launched_rank() == 0:
                raise
            raise typer.Exit(error.exit_code) from None  # every rank stopped alike; rank 0 says why
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


def _print_warnings(config: TrainConfig) -> None:
    """What the config asks for that loses something outside onetrainer (a training run says it in its
    progress display instead, before the model loads)."""
    from rich.markup import escape

    from onetrainer.ui.console import stderr
    from onetrainer.util.config.family import family_warnings

    for message in family_warnings(config):
        stderr.print(f"[yellow]warning:[/] {escape(message)}", soft_wrap=True)


def _display(*, json_lines: bool, main: bool) -> contextlib.AbstractContextManager[Callable[[dict[str, Any]], None]]:
    """The progress display; under torchrun only rank 0 shows one (the others train silently)."""
    from onetrainer.ui.progress import open_display

    if main:
        return open_display(json_lines=json_lines)
    return contextlib.nullcontext(lambda event: None)


def _check_launch(config: TrainConfig, gpus: int, resume: str | None) -> None:
    """What the ranks would each refuse, refused once here before torchrun starts them."""
    import os

    from onetrainer.trainer.backup import find_backup
    from onetrainer.trainer.distributed import World
    from onetrainer.trainer.sharding import uses_sharding
    from onetrainer.trainer.start import check_world_size
    from onetrainer.trainer.step import check_fused_backward
    from onetrainer.util.errors import UserError

    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        raise UserError("--gpus starts torchrun itself; under torchrun, leave it out")
    device = config.training.device
    if device in ("mps",) or device.startswith("cuda:"):
        raise UserError(
            f"--gpus gives each process a GPU of its own, so training.device cannot be {device}",
            where="training.device",
            hint="Set training.device to auto or cuda (choose the GPUs with CUDA_VISIBLE_DEVICES), or cpu.",
        )
    if device != "cpu":
        import torch

        available = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if available < gpus:
            raise UserError(
                f"--gpus {gpus} needs {gpus} CUDA GPUs; this machine has {available}",
                hint="Ask for fewer, or set training.device=cpu to run that many CPU processes (slow; for testing).",
            )
    check_fused_backward(config.training, distributed=True)
    uses_sharding(config, World(size=gpus))
    if resume is not None:
        from onetrainer.trainer.workspace import Workspace

        check_world_size(find_backup(Workspace(config.workspace).backups, resume), gpus)


def _dry_run(config: TrainConfig, *, json_lines: bool, world_size: int) -> None:
    from onetrainer.model_setup.estimate import estimate_memory
    from onetrainer.trainer.components import data_report
    from onetrainer.ui.console import stdout
    from onetrainer.ui.tables import memory_table
    from onetrainer.util.devices import gpu_memory
    from onetrainer.util.errors import UserError

    report = data_report(config, progress=lambda event: None, world_size=world_size)
    try:
        memory: Any = estimate_memory(config, world_size=world_size)
        memory.compare_with(gpu_memory(config.training.device), config.model.type)
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
