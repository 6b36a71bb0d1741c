"""Helpers for the data-loader tests: a config factory and a loader factory with tiny encoders."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from onetrainer.util.config.schema import TrainConfig

ConfigFactory = Callable[..., TrainConfig]


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in extra.items():
        merged[key] = _merge(merged[key], value) if isinstance(value, dict) and key in merged else value
    return merged


@pytest.fixture
def make_config(tmp_path: Path) -> ConfigFactory:
    """`make_config(concepts=[{...}], data={...}, training={...}, loss={...})` -> a validated TrainConfig.

    The workspace (and so the default cache folder) lives in the test's tmp_path.
    """

    def factory(
        *,
        concepts: list[dict[str, Any]],
        data: dict[str, Any] | None = None,
        training: dict[str, Any] | None = None,
        loss: dict[str, Any] | None = None,
    ) -> TrainConfig:
        raw = {
            "model": {"base": "org/model"},
            "workspace": str(tmp_path / "workspace"),
            "data": _merge({"resolution": 64, "workers": 0, "concepts": concepts}, data or {}),
            "training": _merge({"batch_size": 2, "seed": 7}, training or {}),
            **({"loss": loss} if loss is not None else {}),
        }
        return TrainConfig.model_validate(raw)

    return factory


@pytest.fixture
def image_copy(image_dataset_dir: Path, tmp_path: Path) -> Path:
    """A private copy of the regular image dataset, for tests that change files."""
    return Path(shutil.copytree(image_dataset_dir, tmp_path / "images"))
