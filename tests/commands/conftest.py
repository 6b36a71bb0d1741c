"""The CLI run in-process as a user types it, and short training runs through it.

`cli` and `train_tiny_run` are session-scoped so that module-scoped fixtures (a run trained once and
read by several tests) can use them; they hold no state between calls.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import pytest

from onetrainer.util.tiny.runs import write_run_config

if TYPE_CHECKING:
    from typer.testing import Result


class TinyRun(NamedTuple):
    """A finished `train` run: its folder (config, workspace, `out/`), the file it saved, what the CLI said."""

    root: Path
    saved: Path
    result: Result


@pytest.fixture(scope="session")
def cli() -> Callable[..., Result]:
    """`cli(*args)`: `onetrainer ARGS` in-process, each argument `str`-ed; 200 columns wide, so that Rich
    wraps no message a test looks for."""
    from typer.testing import CliRunner

    from onetrainer.commands.app import app

    runner = CliRunner()

    def invoke(*args: object) -> Result:
        return runner.invoke(app, [str(arg) for arg in args], terminal_width=200)

    return invoke


@pytest.fixture(scope="session")
def train_tiny_run(
    tmp_path_factory: pytest.TempPathFactory, shapes_dataset_dir: Path, cli: Callable[..., Result]
) -> Callable[..., TinyRun]:
    """`train_tiny_run(name, model, method, output, *overrides, **sections)`: `onetrainer train` of
    `write_run_config` (two CPU steps on the shapes dataset) in a new folder named after `name`, with
    `overrides` on the command line; the run must succeed."""

    def train(name: str, model: dict[str, Any], method: str, output: str, *overrides: str, **sections: Any) -> TinyRun:
        root = tmp_path_factory.mktemp(name)
        config = write_run_config(root, shapes_dataset_dir, model, method, output, **sections)
        result = cli("train", config, *overrides)
        assert result.exit_code == 0, result.output
        return TinyRun(root, root / "out" / output, result)

    return train
