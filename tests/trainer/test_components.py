"""The trainer reaches a family only through its spec and the registry: the bucket step is the spec's."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from onetrainer.trainer.components import data_report, quantisation
from onetrainer.util.config.schema import TrainConfig
from onetrainer.util.config.types import CHECK_PATHS
from onetrainer.util.family import FamilySpec


@pytest.fixture
def coarse_family(register_unet_test_family: Callable[..., FamilySpec]) -> FamilySpec:
    """A made-up family whose only difference that matters here is its 64 px bucket step."""
    return register_unet_test_family("coarse-test", "Coarse test family", bucket_step=64, default_resolution=1024)


def _config(model_type: str, images: Path) -> TrainConfig:
    data = {
        "model": {"type": model_type, "base": "org/model"},
        "data": {"resolution": 128, "concepts": [{"path": images}]},
    }
    return TrainConfig.model_validate(data, context={CHECK_PATHS: False})


def test_the_dry_run_buckets_at_the_familys_own_step(coarse_family: FamilySpec, image_dataset_dir: Path) -> None:
    fine = _config("sd15", image_dataset_dir)
    coarse = _config(coarse_family.name, image_dataset_dir)
    assert (quantisation(fine), quantisation(coarse)) == (8, 64)

    def sides(config: TrainConfig) -> set[int]:
        report = data_report(config, progress=lambda event: None)
        return {int(side) for bucket in report.buckets for side in bucket.split("x")}

    assert all(side % 64 == 0 for side in sides(coarse))
    assert any(side % 64 for side in sides(fine))
