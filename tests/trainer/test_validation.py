"""The validation loss: the mean over samples, the same noise every pass, and the same loss however many ranks
share the batches."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from onetrainer.data_loader import build_data_loader
from onetrainer.trainer.precision import MixedPrecision
from onetrainer.trainer.validation import validation_sums
from onetrainer.util.config.schema import TrainConfig
from onetrainer.util.config.training import Precision

CPU = torch.device("cpu")


class NoisySetup:
    """A setup whose loss is the batch's pixels against noise drawn from the validation generator."""

    def predict(self, batch: dict[str, Any], generator: torch.Generator) -> torch.Tensor:
        pixels = batch["pixels"]
        return pixels - torch.randn(pixels.shape, generator=generator)

    def loss(self, output: torch.Tensor, batch: dict[str, Any]) -> torch.Tensor:
        return output.square().mean()


def _config(tmp_path: Path, dataset: Path, images: Path) -> TrainConfig:
    return TrainConfig.model_validate(
        {
            "model": {"base": "org/model"},
            "workspace": str(tmp_path / "workspace"),
            "data": {
                "resolution": 64,
                "workers": 0,
                "concepts": [{"path": str(images)}, {"path": str(dataset), "type": "validation"}],
            },
            "training": {"batch_size": 2, "seed": 7},
        }
    )


def _sums(config: TrainConfig, rank: int, world_size: int) -> tuple[float, int]:
    with build_data_loader(config, rank=rank, world_size=world_size) as loader:
        return validation_sums(
            NoisySetup(), loader.validation_batches(), MixedPrecision(Precision.FP32, CPU), seed=7, device=CPU
        )


def test_two_ranks_measure_the_loss_one_process_measures(
    tmp_path: Path, shapes_dataset_dir: Path, image_dataset_dir: Path
) -> None:
    config = _config(tmp_path, shapes_dataset_dir, image_dataset_dir)
    total, count = _sums(config, 0, 1)
    shares = [_sums(config, rank, 2) for rank in (0, 1)]
    assert count == sum(share[1] for share in shares) == 16  # the validation images
    assert all(share[1] > 0 for share in shares)
    assert sum(share[0] for share in shares) == pytest.approx(total, rel=1e-12)
    assert _sums(config, 0, 1) == (total, count)  # and the same noise every pass


class GivenLosses:
    """A setup whose loss is the batch's mean of its given per-sample losses."""

    def predict(self, batch: dict[str, Any], generator: torch.Generator) -> torch.Tensor:
        return batch["losses"]

    def loss(self, output: torch.Tensor, batch: dict[str, Any]) -> torch.Tensor:
        return output.mean()


def test_the_loss_is_the_mean_over_samples_a_short_batch_weighing_by_its_size() -> None:
    batches = [(0, {"losses": torch.ones(4)}), (1, {"losses": torch.tensor([9.0])})]
    total, count = validation_sums(GivenLosses(), batches, MixedPrecision(Precision.FP32, CPU), seed=7, device=CPU)
    assert count == 5
    assert total / count == pytest.approx(2.6)  # not 5.0, the mean of the two batches' means
