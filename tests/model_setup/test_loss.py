"""Loss types, masks, objective weights and per-sample weights against their reference formulas."""

from __future__ import annotations

import math

import pytest
import torch

from onetrainer.model_setup.loss import diffusion_loss, elementwise_loss, mask_weights
from onetrainer.util.config.loss import LossConfig, LossType


def _pair() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return torch.randn(3, 4, 8, 8, generator=gen) * 2, torch.randn(3, 4, 8, 8, generator=gen)


@pytest.mark.parametrize(
    ("kind", "reference"),
    [
        (LossType.MSE, lambda d: d**2),
        (LossType.L1, lambda d: d.abs()),
        (LossType.LOG_COSH, lambda d: torch.log(torch.cosh(d.double())).float()),
    ],
)
def test_elementwise_loss_equals_formula(kind: LossType, reference) -> None:
    prediction, target = _pair()
    assert torch.allclose(elementwise_loss(prediction, target, kind), reference(prediction - target), atol=1e-6)


def test_huber_is_quadratic_inside_delta_and_linear_outside() -> None:
    prediction = torch.tensor([0.0, 0.3, -0.5, 2.0, -3.0])
    loss = elementwise_loss(prediction, torch.zeros(5), LossType.HUBER, delta=0.5)
    expected = torch.tensor([0.0, 0.5 * 0.09, 0.5 * 0.25, 0.5 * (2.0 - 0.25), 0.5 * (3.0 - 0.25)])
    assert torch.allclose(loss, expected, atol=1e-6)


def test_log_cosh_is_finite_for_large_differences() -> None:
    loss = elementwise_loss(torch.tensor([200.0, -200.0]), torch.zeros(2), LossType.LOG_COSH)
    assert torch.allclose(loss, torch.tensor([200 - math.log(2), 200 - math.log(2)]), atol=1e-4)


@pytest.mark.parametrize("kind", list(LossType))
def test_total_loss_reduces_per_sample_then_weights(kind: LossType) -> None:
    prediction, target = _pair()
    objective_weights = torch.tensor([0.2, 3.0, 40.0])
    loss_weight = torch.tensor([1.0, 0.5, 2.0])
    config = LossConfig(type=kind, huber_delta=0.7)
    total = diffusion_loss(prediction, target, objective_weights, config, loss_weight=loss_weight)
    per_sample = elementwise_loss(prediction, target, kind, 0.7).mean(dim=(1, 2, 3))
    assert total.item() == pytest.approx((per_sample * objective_weights * loss_weight).mean().item(), rel=1e-6)


def test_mask_is_area_averaged_to_latent_size_and_blended_with_unmasked_weight() -> None:
    mask = torch.zeros(1, 1, 16, 16)
    mask[..., :8, :] = 1.0
    mask[..., 8:10, :2] = 1.0
    weights = mask_weights(mask, (2, 2), unmasked_weight=0.1)
    assert weights.shape == (1, 1, 2, 2)
    lower_left = 0.1 + 0.9 * (4 / 64)
    assert torch.allclose(weights[0, 0], torch.tensor([[1.0, 1.0], [lower_left, 0.1]]), atol=1e-6)


def test_masked_loss_with_and_without_area_normalisation() -> None:
    prediction, target = torch.ones(2, 4, 2, 2), torch.zeros(2, 4, 2, 2)
    prediction[1] = 2.0
    mask = torch.zeros(2, 1, 16, 16)
    mask[0, :, :8, :8] = 1.0
    mask[1] = 1.0
    weights = torch.tensor([[[1.0, 0.2], [0.2, 0.2]]]).expand(1, 2, 2)
    plain = LossConfig(masked={"enabled": True, "unmasked_weight": 0.2})
    loss = diffusion_loss(prediction, target, torch.ones(2), plain, mask=mask)
    first, second = (1.0 * weights).mean().item(), 4.0
    assert loss.item() == pytest.approx((first + second) / 2, abs=1e-6)
    normalised = LossConfig(masked={"enabled": True, "unmasked_weight": 0.2, "normalize_area": True})
    loss = diffusion_loss(prediction, target, torch.ones(2), normalised, mask=mask)
    assert loss.item() == pytest.approx((1.0 + 4.0) / 2, abs=1e-6)


def test_a_sample_drawn_unmasked_trains_on_the_whole_image() -> None:
    """OneTrainer's `unmasked_probability`: the marked samples weigh every pixel 1, the others keep their mask."""
    prediction, target = torch.ones(2, 4, 2, 2), torch.zeros(2, 4, 2, 2)
    mask = torch.zeros(2, 1, 16, 16)
    mask[:, :, :8, :8] = 1.0
    config = LossConfig(masked={"enabled": True, "unmasked_weight": 0.2, "unmasked_probability": 0.5})
    masked_mean = (1.0 + 3 * 0.2) / 4
    loss = diffusion_loss(prediction, target, torch.ones(2), config, mask=mask, unmasked=torch.tensor([True, False]))
    assert loss.item() == pytest.approx((1.0 + masked_mean) / 2, abs=1e-6)
    neither = diffusion_loss(prediction, target, torch.ones(2), config, mask=mask, unmasked=torch.tensor([False] * 2))
    assert neither.item() == pytest.approx(masked_mean, abs=1e-6)


def test_unmasked_samples_are_drawn_from_the_steps_noise_stream_at_the_configured_rate() -> None:
    from onetrainer.model_setup.diffusion import _draw

    draws = _draw(torch.Generator().manual_seed(3), 20_000, 0.1)
    assert draws.dtype == torch.bool
    assert draws.float().mean().item() == pytest.approx(0.1, abs=0.01)
    assert torch.equal(draws, _draw(torch.Generator().manual_seed(3), 20_000, 0.1))


def test_mask_is_ignored_unless_masked_training_is_on() -> None:
    prediction, target = _pair()
    mask = torch.zeros(3, 1, 64, 64)
    with_mask = diffusion_loss(prediction, target, torch.ones(3), LossConfig(), mask=mask)
    assert with_mask.item() == pytest.approx(((prediction - target) ** 2).mean().item(), abs=1e-6)
