"""Memory presets: each family ships some, each states its budget, passes `--check`, and fits its budget by the
dry run's own estimate."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from onetrainer.commands.app import app
from onetrainer.util.config.loader import load_config
from onetrainer.util.config.presets import (
    load_preset,
    memory_budget,
    memory_presets,
    preset_description,
    preset_names,
    presets_dir,
)

GIB = 2**30
runner = CliRunner()


def test_the_budget_comes_from_the_name() -> None:
    assert memory_budget("sdxl-lora-8gb") == 8
    assert memory_budget("flux-full-24gb") == 24
    assert memory_budget("sdxl-lora") is None


def test_every_family_with_presets_has_a_memory_preset() -> None:
    families = {load_preset(name)["model"]["type"] for name in preset_names() if name != "demo"}
    with_budget = {load_preset(name)["model"]["type"] for name in memory_presets()}
    assert families <= with_budget


@pytest.mark.parametrize("name", memory_presets())
def test_a_memory_preset_states_its_budget_and_passes_check(name: str, tmp_path: Path) -> None:
    assert re.search(rf"on an? {memory_budget(name)} GB GPU", preset_description(name))
    result = runner.invoke(
        app, ["train", str(presets_dir() / f"{name}.yaml"), f"data.concepts.0.path={tmp_path}", "--check"]
    )
    assert result.exit_code == 0, result.output


@pytest.mark.slow
@pytest.mark.parametrize("name", memory_presets())
def test_a_memory_preset_fits_its_budget_by_the_estimate(name: str, tmp_path: Path) -> None:
    from onetrainer.model_setup.estimate import estimate_memory

    config = load_config(presets_dir() / f"{name}.yaml", [f"data.concepts.0.path={tmp_path}"])
    estimate = estimate_memory(config)
    budget = memory_budget(name)
    assert budget is not None
    assert estimate.peak <= budget * GIB, f"{name}: {estimate.peak / GIB:.1f} GiB"
