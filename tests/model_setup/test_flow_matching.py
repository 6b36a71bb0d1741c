"""Flow-matching math against diffusers' reference functions and scheduler, to 1e-6."""

from __future__ import annotations

import math

import pytest
import torch
from pydantic import ValidationError

from onetrainer.model_setup.flow_matching import (
    FlowMatchingObjective,
    ResolutionShift,
    loss_weights,
    resolution_shift_sigmas,
    sample_density,
    shift_sigmas,
)
from onetrainer.util.config.loss import MODE_SCALE_MAX, LossConfig, LossWeighting, NoiseConfig, TimestepConfig
from onetrainer.util.errors import UserError

FLUX_SCHEDULER = {
    "shift": 3.0,
    "use_dynamic_shifting": True,
    "base_shift": 0.5,
    "max_shift": 1.15,
    "base_image_seq_len": 256,
    "max_image_seq_len": 4096,
}


@pytest.mark.parametrize(
    ("distribution", "scheme", "extra"),
    [
        ("uniform", "none", {}),
        ("logit-normal", "logit_normal", {"logit_mean": 0.3, "logit_std": 1.2}),
        ("mode", "mode", {"mode_scale": 1.29}),
    ],
)
def test_density_equals_diffusers_draw_for_draw(distribution: str, scheme: str, extra: dict) -> None:
    from diffusers.training_utils import compute_density_for_timestep_sampling

    config = TimestepConfig(distribution=distribution, mean=0.3, std=1.2, mode_scale=1.29)
    ours = sample_density(config, 512, torch.Generator().manual_seed(5))
    reference = compute_density_for_timestep_sampling(scheme, 512, generator=torch.Generator().manual_seed(5), **extra)
    assert torch.allclose(ours, reference, atol=1e-6)


def test_cosmap_density_equals_the_sd3_paper_formula() -> None:
    drawn = sample_density(TimestepConfig(distribution="cosmap"), 256, torch.Generator().manual_seed(2))
    unit = torch.rand(256, generator=torch.Generator().manual_seed(2))
    assert torch.allclose(drawn, 1 - 1 / (torch.tan(math.pi * unit / 2) + 1), atol=1e-6)


def test_sigmoid_is_not_a_flow_matching_density() -> None:
    with pytest.raises(UserError, match="sigmoid"):
        sample_density(TimestepConfig(distribution="sigmoid"), 4, torch.Generator())


@pytest.mark.parametrize("shift", [1.0, 3.0, 6.0])
def test_fixed_shift_equals_the_scheduler_sigmas(shift: float) -> None:
    from diffusers import FlowMatchEulerDiscreteScheduler

    scheduler = FlowMatchEulerDiscreteScheduler(shift=shift)
    unshifted = FlowMatchEulerDiscreteScheduler(shift=1.0).sigmas
    assert torch.allclose(shift_sigmas(unshifted, shift), scheduler.sigmas, atol=1e-6)


@pytest.mark.parametrize("image_seq_len", [256, 1024, 4096])
def test_resolution_shift_equals_the_scheduler_time_shift(image_seq_len: int) -> None:
    from diffusers import FlowMatchEulerDiscreteScheduler
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift

    scheduler = FlowMatchEulerDiscreteScheduler(**FLUX_SCHEDULER)
    mu = ResolutionShift.from_scheduler_config(FLUX_SCHEDULER).mu(image_seq_len)
    assert mu == pytest.approx(calculate_shift(image_seq_len, 256, 4096, 0.5, 1.15), abs=1e-9)
    unit = torch.linspace(0.01, 1.0, 100)
    assert torch.allclose(resolution_shift_sigmas(unit, mu), scheduler.time_shift(mu, 1.0, unit), atol=1e-6)


@pytest.mark.parametrize(
    ("weighting", "scheme"),
    [(LossWeighting.NONE, "none"), (LossWeighting.SIGMA_SQRT, "sigma_sqrt"), (LossWeighting.COSMAP, "cosmap")],
)
def test_loss_weights_equal_diffusers(weighting: LossWeighting, scheme: str) -> None:
    from diffusers.training_utils import compute_loss_weighting_for_sd3

    sigmas = torch.linspace(0.05, 1.0, 20)
    assert torch.allclose(loss_weights(sigmas, weighting), compute_loss_weighting_for_sd3(scheme, sigmas), atol=1e-6)


def test_sigma_sqrt_is_finite_at_a_noise_level_of_zero() -> None:
    """u = 0 is a possible draw (torch.rand is in [0, 1)); its weight is that of the least grid sigma."""
    weights = loss_weights(torch.tensor([0.0, 1e-7, 0.5]), LossWeighting.SIGMA_SQRT)
    assert torch.isfinite(weights).all()
    assert weights.tolist() == pytest.approx([1e6, 1e6, 4.0])


def test_a_zero_shift_in_the_scheduler_config_is_kept() -> None:
    shift = ResolutionShift.from_scheduler_config({**FLUX_SCHEDULER, "base_shift": 0.0, "max_shift": 0.0})
    assert (shift.base_shift, shift.max_shift, shift.mu(4096)) == (0.0, 0.0, 0.0)
    assert ResolutionShift.from_scheduler_config({"base_shift": None}).base_shift == ResolutionShift().base_shift


def test_ddpm_weightings_are_refused() -> None:
    with pytest.raises(UserError, match="min-snr-gamma"):
        loss_weights(torch.ones(2), LossWeighting.MIN_SNR_GAMMA)


def test_objective_noises_and_targets_like_the_scheduler() -> None:
    objective = FlowMatchingObjective(NoiseConfig(shift=3.0), LossConfig(), {"shift": 1.0})
    latents = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    noised = objective(latents, torch.Generator().manual_seed(9), image_seq_len=64)

    gen = torch.Generator().manual_seed(9)
    noise = torch.randn(3, 4, 8, 8, generator=gen)
    sigmas = shift_sigmas(torch.rand(3, generator=gen), 3.0)
    assert torch.allclose(noised.noise, noise)
    assert torch.allclose(noised.timesteps, sigmas * 1000, atol=1e-4)
    assert torch.allclose(noised.target, noise - latents, atol=1e-6)
    sigma = sigmas.reshape(-1, 1, 1, 1)
    assert torch.allclose(noised.noisy, (1 - sigma) * latents + sigma * noise, atol=1e-6)
    assert torch.equal(noised.weights, torch.ones(3))


@pytest.mark.parametrize("index", [0, 250, 999])
def test_noising_formula_and_time_input_follow_the_scheduler(index: int) -> None:
    from diffusers import FlowMatchEulerDiscreteScheduler

    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0)
    x0, noise = torch.randn(1, 4, 8, 8), torch.randn(1, 4, 8, 8)
    sigma, timestep = scheduler.sigmas[index], scheduler.timesteps[index]
    assert timestep.item() == pytest.approx(sigma.item() * 1000, rel=1e-6)
    expected = scheduler.scale_noise(x0, timestep.reshape(1), noise)
    assert torch.allclose((1 - sigma) * x0 + sigma * noise, expected, atol=1e-6)


def test_objective_takes_shift_and_dynamic_shifting_from_the_scheduler_unless_configured() -> None:
    from_model = FlowMatchingObjective(NoiseConfig(), LossConfig(), FLUX_SCHEDULER)
    assert from_model.dynamic
    assert from_model.shift == 3.0
    fixed = FlowMatchingObjective(NoiseConfig(dynamic_shift=False, shift=2.0), LossConfig(), FLUX_SCHEDULER)
    assert not fixed.dynamic
    assert fixed.shift == 2.0
    small = from_model.sigmas(4096, torch.Generator().manual_seed(0), 256).mean()
    large = from_model.sigmas(4096, torch.Generator().manual_seed(0), 4096).mean()
    assert large > small  # more tokens, more noise


def test_strength_range_limits_the_noise_level_before_the_shift() -> None:
    config = NoiseConfig(shift=1.0, timesteps=TimestepConfig(min_strength=0.2, max_strength=0.5))
    sigmas = FlowMatchingObjective(config, LossConfig(), {}).sigmas(2000, torch.Generator().manual_seed(3), 64)
    assert sigmas.min() >= 0.2
    assert sigmas.max() <= 0.5


def test_draw_order_is_noise_offset_level_perturbation() -> None:
    config = NoiseConfig(offset=0.1, input_perturbation=0.05, shift=1.0)
    latents = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(4))
    noised = FlowMatchingObjective(config, LossConfig(weighting="cosmap"), {})(
        latents, torch.Generator().manual_seed(8), image_seq_len=64
    )
    gen = torch.Generator().manual_seed(8)
    noise = torch.randn(2, 4, 8, 8, generator=gen)
    noise = noise + 0.1 * torch.randn(2, 4, 1, 1, generator=gen)
    sigma = torch.rand(2, generator=gen)
    perturbed = noise + 0.05 * torch.randn(2, 4, 8, 8, generator=gen)
    s = sigma.reshape(-1, 1, 1, 1)
    assert torch.allclose(noised.noisy, (1 - s) * latents + s * perturbed, atol=1e-6)
    assert torch.allclose(noised.target, noise - latents, atol=1e-6)
    assert torch.allclose(noised.weights, 2 / (math.pi * (1 - 2 * sigma + 2 * sigma**2)), atol=1e-6)


@pytest.mark.parametrize("scale", [-1.5, 1.8, 8.0])
def test_a_mode_scale_outside_the_papers_range_is_refused(scale: float) -> None:
    """Beyond 2/(pi-2) the density is not monotone, and at 8 a third of the shifted noise levels fall outside [0, 1]."""
    with pytest.raises(ValidationError, match="mode_scale"):
        TimestepConfig(distribution="mode", mode_scale=scale)


def test_the_largest_mode_scale_draws_noise_levels_inside_zero_and_one() -> None:
    config = TimestepConfig(distribution="mode", mode_scale=MODE_SCALE_MAX)
    draws = sample_density(config, 100_000, torch.Generator().manual_seed(0))
    assert pytest.approx(1.7519, abs=1e-4) == MODE_SCALE_MAX
    assert 0 <= draws.min().item() <= draws.max().item() <= 1
