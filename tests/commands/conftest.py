"""The CLI run in-process as a user types it, and short training runs through it: `write_run_config` runs
of any family (`train_tiny_run`) and the demo preset's arguments (`demo_args`).

`cli` and `train_tiny_run` are session-scoped so that module-scoped fixtures (a run trained once and
read by several tests) can use them; they hold no state between calls.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import pytest

from onetrainer.util.config.presets import presets_dir
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


@pytest.fixture(scope="module")
def demo_overrides() -> list[str]:
    """What every `demo_args` list of a module sets before the call's own overrides; a module that
    wants the same settings in all its runs overrides this fixture."""
    return []


@pytest.fixture(scope="module")
def demo_args(demo_overrides: list[str]) -> Callable[..., list[str]]:
    """`demo_args(root, dataset, *overrides, output="lora.safetensors")`: `train` of the demo preset on
    `dataset`, its workspace in `root` and its output in `root/out`, with no previews."""
    demo = presets_dir() / "demo.yaml"

    def args(root: Path, dataset: Path, *overrides: str, output: str = "lora.safetensors") -> list[str]:
        return [
            "train",
            str(demo),
            f"data.concepts.0.path={dataset}",
            f"workspace={root / 'workspace'}",
            f"saving.output={root / 'out' / output}",
            "sampling.before_training=false",
            "sampling.every=never",
            *demo_overrides,
            *overrides,
        ]

    return args
