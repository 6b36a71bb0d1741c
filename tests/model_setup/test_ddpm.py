"""The DDPM objective against its reference formulas (and diffusers' own schedulers)."""

from __future__ import annotations

import math

import pytest
import torch

from onetrainer.model_setup.ddpm import (
    SNR_FLOOR,
    DdpmObjective,
    add_noise,
    prediction_target,
    rescale_zero_terminal_snr,
    sample_timesteps,
    snr,
    timestep_range,
    timestep_weights,
)
from onetrainer.util.config.loss import LossConfig, LossWeighting, NoiseConfig, TimestepConfig
from onetrainer.util.errors import UserError


def _schedule() -> torch.Tensor:
    from diffusers import DDPMScheduler

    return DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear").alphas_cumprod


def test_zero_terminal_snr_matches_diffusers_rescale() -> None:
    from diffusers import DDPMScheduler

    expected = DDPMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", rescale_betas_zero_snr=True
    ).alphas_cumprod
    ours = rescale_zero_terminal_snr(_schedule())
    assert torch.allclose(ours, expected, atol=1e-6)
    assert ours[-1].item() == 0.0
    assert ours[0].item() == pytest.approx(_schedule()[0].item(), abs=1e-7)


def test_zero_terminal_snr_is_idempotent() -> None:
    once = rescale_zero_terminal_snr(_schedule())
    assert torch.allclose(rescale_zero_terminal_snr(once), once, atol=1e-7)


def test_epsilon_and_v_targets_equal_the_formulas() -> None:
    alphas = _schedule()
    x0, noise = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(1)), torch.randn(3, 4, 8, 8)
    t = torch.tensor([0, 499, 999])
    a = alphas[t].reshape(-1, 1, 1, 1)
    assert torch.allclose(add_noise(x0, noise, t, alphas), a.sqrt() * x0 + (1 - a).sqrt() * noise, atol=1e-6)
    assert torch.equal(prediction_target(x0, noise, t, alphas, "epsilon"), noise)
    v = prediction_target(x0, noise, t, alphas, "v_prediction")
    assert torch.allclose(v, a.sqrt() * noise - (1 - a).sqrt() * x0, atol=1e-6)


def test_targets_agree_with_diffusers_scheduler() -> None:
    from diffusers import DDPMScheduler

    scheduler = DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
    x0, noise, t = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8), torch.tensor([10, 900])
    alphas = scheduler.alphas_cumprod
    assert torch.allclose(add_noise(x0, noise, t, alphas), scheduler.add_noise(x0, noise, t), atol=1e-6)
    assert torch.allclose(
        prediction_target(x0, noise, t, alphas, "v_prediction"), scheduler.get_velocity(x0, noise, t), atol=1e-6
    )


def test_snr_is_alpha_over_one_minus_alpha() -> None:
    alphas = _schedule()
    t = torch.tensor([5, 500])
    assert torch.allclose(snr(t, alphas), alphas[t] / (1 - alphas[t]))


def test_uniform_timesteps_equal_reference_draw() -> None:
    config = TimestepConfig()
    drawn = sample_timesteps(config, 64, 1000, torch.Generator().manual_seed(7))
    unit = torch.rand(64, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    assert torch.equal(drawn, torch.floor(unit * 1000).long())


def test_strength_range_limits_timesteps() -> None:
    config = TimestepConfig(min_strength=0.2, max_strength=0.5)
    assert timestep_range(config, 1000) == (200, 500)
    drawn = sample_timesteps(config, 2000, 1000, torch.Generator().manual_seed(0))
    assert drawn.min().item() >= 200
    assert drawn.max().item() <= 499
    unit = torch.rand(2000, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert torch.equal(drawn, 200 + torch.floor(unit * 300).long())


def test_logit_normal_timesteps_equal_reference_draw() -> None:
    config = TimestepConfig(distribution="logit-normal", mean=0.5, std=0.8)
    drawn = sample_timesteps(config, 4000, 1000, torch.Generator().manual_seed(3))
    normal = torch.randn(4000, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    assert torch.equal(drawn, torch.floor(torch.sigmoid(0.5 + 0.8 * normal) * 1000).long())
    assert drawn.float().median().item() > 550  # a positive mean favours noisier timesteps


def test_sigmoid_timesteps_follow_their_weights() -> None:
    config = TimestepConfig(distribution="sigmoid", center=0.5, steepness=8.0, min_strength=0.1)
    drawn = sample_timesteps(config, 200_000, 1000, torch.Generator().manual_seed(4))
    assert drawn.dtype == torch.int64
    assert int(drawn.min()) >= 100
    assert int(drawn.max()) <= 999
    position = (torch.arange(900, dtype=torch.float64) + 0.5) / 900
    weights = 1 / (1 + torch.exp(-8.0 * (position - 0.5)))
    expected = (weights.reshape(9, 100).sum(1) / weights.sum()).float()  # per 100 timesteps
    observed = torch.bincount((drawn - 100) // 100, minlength=9).float() / len(drawn)
    assert torch.allclose(observed, expected, atol=0.004)
    assert torch.equal(drawn, sample_timesteps(config, 200_000, 1000, torch.Generator().manual_seed(4)))
    one = sample_timesteps(config, 1, 1000, torch.Generator().manual_seed(4))
    assert one.shape == (1,)
    assert 100 <= int(one) <= 999


def test_objective_draws_noise_offset_timesteps_perturbation_in_that_order() -> None:
    alphas = _schedule()
    config = NoiseConfig(offset=0.1, input_perturbation=0.05)
    latents = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(9))
    noised = DdpmObjective(config, LossConfig(), alphas, "v_prediction")(latents, torch.Generator().manual_seed(11))

    gen = torch.Generator().manual_seed(11)
    noise = torch.randn(2, 4, 8, 8, generator=gen)
    noise = noise + 0.1 * torch.randn(2, 4, 1, 1, generator=gen)
    t = torch.floor(torch.rand(2, generator=gen, dtype=torch.float64) * 1000).long()
    perturbed = noise + 0.05 * torch.randn(2, 4, 8, 8, generator=gen)
    a = alphas[t].reshape(-1, 1, 1, 1)
    assert torch.equal(noised.timesteps, t)
    assert torch.allclose(noised.noise, noise, atol=1e-6)
    assert torch.allclose(noised.noisy, a.sqrt() * latents + (1 - a).sqrt() * perturbed, atol=1e-6)
    assert torch.allclose(noised.target, a.sqrt() * noise - (1 - a).sqrt() * latents, atol=1e-6)


def test_objective_is_deterministic_per_seed() -> None:
    noiser = DdpmObjective(NoiseConfig(), LossConfig(), _schedule(), "epsilon")
    latents = torch.randn(2, 4, 8, 8)
    first = noiser(latents, torch.Generator().manual_seed(5))
    second = noiser(latents, torch.Generator().manual_seed(5))
    third = noiser(latents, torch.Generator().manual_seed(6))
    assert torch.equal(first.noisy, second.noisy)
    assert torch.equal(first.timesteps, second.timesteps)
    assert not torch.equal(first.noisy, third.noisy)


def test_objective_with_zero_terminal_snr_uses_rescaled_schedule() -> None:
    noiser = DdpmObjective(NoiseConfig(zero_terminal_snr=True), LossConfig(), _schedule(), "v_prediction")
    assert noiser.alphas_cumprod[-1].item() == 0.0
    assert noiser.alphas_cumprod.dtype == torch.float32


def test_sample_prediction_targets_the_clean_latents() -> None:
    x0, noise, t = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8), torch.tensor([3, 700])
    assert torch.equal(prediction_target(x0, noise, t, _schedule(), "sample"), x0)


def test_flow_matching_distributions_are_refused() -> None:
    with pytest.raises(UserError, match="mode"):
        sample_timesteps(TimestepConfig(distribution="mode"), 4, 1000, torch.Generator())


def test_min_snr_gamma_weights_per_prediction_type() -> None:
    snr_values = torch.tensor([0.1, 1.0, 5.0, 20.0])
    capped = torch.minimum(snr_values, torch.tensor(5.0))
    eps = timestep_weights(snr_values, LossWeighting.MIN_SNR_GAMMA, 5.0, "epsilon")
    v = timestep_weights(snr_values, LossWeighting.MIN_SNR_GAMMA, 5.0, "v_prediction")
    sample = timestep_weights(snr_values, LossWeighting.MIN_SNR_GAMMA, 5.0, "sample")
    assert torch.allclose(eps, capped / snr_values, atol=1e-6)
    assert torch.allclose(v, capped / (snr_values + 1), atol=1e-6)
    assert torch.allclose(sample, capped, atol=1e-6)
    assert torch.allclose(eps, torch.tensor([1.0, 1.0, 1.0, 0.25]))


def test_debiased_weight_is_inverse_sqrt_snr() -> None:
    snr_values = torch.tensor([0.01, 1.0, 100.0])
    weights = timestep_weights(snr_values, LossWeighting.DEBIASED, 5.0, "epsilon")
    assert torch.allclose(weights, 1 / snr_values.sqrt(), atol=1e-6)


def test_debiased_weight_follows_the_prediction_type_and_caps_snr_at_1000() -> None:
    """OneTrainer's (and sd-scripts') rule: v-prediction weighs 1/sqrt(SNR + 1), bounded by 1 at the noisy end
    where 1/sqrt(SNR) would reach 31.6 on a zero-terminal-SNR schedule; a sample loss weighs sqrt(SNR)."""
    snr_values = torch.tensor([0.0, 1.0, 100.0, 5000.0])
    floored = snr_values.clamp(1e-3, 1000.0)
    v = timestep_weights(snr_values, LossWeighting.DEBIASED, 5.0, "v_prediction")
    assert torch.allclose(v, 1 / (floored + 1).sqrt(), atol=1e-6)
    assert v.max().item() <= 1.0
    sample = timestep_weights(snr_values, LossWeighting.DEBIASED, 5.0, "sample")
    assert torch.allclose(sample, floored.sqrt(), atol=1e-5)
    eps = timestep_weights(snr_values, LossWeighting.DEBIASED, 5.0, "epsilon")
    assert eps[-1].item() == pytest.approx(1 / math.sqrt(1000.0))


def test_zero_snr_is_floored_instead_of_dividing_by_zero() -> None:
    weights = timestep_weights(torch.tensor([0.0]), LossWeighting.DEBIASED, 5.0, "epsilon")
    assert weights.item() == pytest.approx(1 / math.sqrt(SNR_FLOOR))
    assert timestep_weights(torch.tensor([0.0]), LossWeighting.MIN_SNR_GAMMA, 5.0, "epsilon").item() == 1.0


def test_flow_matching_weightings_are_refused() -> None:
    with pytest.raises(UserError, match="sigma-sqrt"):
        timestep_weights(torch.ones(2), LossWeighting.SIGMA_SQRT, 5.0, "epsilon")


def test_objective_weights_are_the_snr_weights_of_its_timesteps() -> None:
    loss = LossConfig(weighting="min-snr-gamma", gamma=5.0)
    objective = DdpmObjective(NoiseConfig(), loss, _schedule(), "v_prediction")
    noised = objective(torch.randn(4, 4, 8, 8), torch.Generator().manual_seed(2))
    expected = timestep_weights(snr(noised.timesteps, _schedule()), LossWeighting.MIN_SNR_GAMMA, 5.0, "v_prediction")
    assert torch.allclose(noised.weights, expected)
