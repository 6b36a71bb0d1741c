"""`onetrainer train CONFIG [KEY=VALUE ...]`: validate a run config and train."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def train(
    config: Annotated[Path, typer.Argument(help="Run config (YAML). It may name a `preset:` to start from.")],
    overrides: Annotated[
        list[str] | None,
        typer.Argument(help="KEY=VALUE overrides with dotted paths, e.g. training.learning_rate=1e-4."),
    ] = None,
    check: Annotated[
        bool, typer.Option("--check", help="Validate and print the resolved config, then exit.")
    ] = False,
) -> None:
    """Train a model from a config file (defaults < preset < file < overrides)."""
    from onetrainer.util.config.loader import dump_config, load_config
    from onetrainer.util.errors import UserError

    resolved = load_config(config, overrides or [])
    if check:
        typer.echo(dump_config(resolved), nl=False)
        return
    raise UserError(
        "training is not available in this build yet; only `--check` works",
        hint="Use `onetrainer train CONFIG --check` to validate a config.",
    )
