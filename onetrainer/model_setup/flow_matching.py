"""The flow-matching (rectified flow) objective: noise levels, shifts, noising and loss weights.

With sigma in [0, 1] the noise level (1 = pure noise):
  x_t = (1 - sigma) * x0 + sigma * noise,   target = noise - x0,   the denoiser's time input = 1000 * sigma.
The noise level is drawn in two stages, as the SD 3 paper and the reference trainers do:
  1. u in (0, 1) from a density: uniform; logit-normal sigmoid(mean + std * z); mode
     1 - u - s (cos^2(pi u / 2) - 1 + u); cosmap 1 - 1 / (tan(pi u / 2) + 1);
  2. a shift towards noise: fixed, sigma = s u / (1 + (s - 1) u) (SD 3: s = 3), or resolution-dependent,
     sigma = e^mu / (e^mu + 1/u - 1) with mu linear in the image's token count (the scheduler's
     `use_dynamic_shifting`).
u is the noise level itself (as in the SD 3 paper and kohya's trainers), so a positive logit-normal mean
favours noisier steps. The strength range (`min_strength`, `max_strength`) limits u before the shift.

The density draws are those of diffusers' `compute_density_for_timestep_sampling`, the shifts those of
`FlowMatchEulerDiscreteScheduler`, and the loss weights those of the SD 3 weighting function in diffusers'
`training_utils`; the tests compare each against them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from onetrainer.model_setup.objective import Noised
from onetrainer.util.config.loss import LossConfig, LossWeighting, NoiseConfig, TimestepConfig, TimestepDistribution
from onetrainer.util.errors import UserError

if TYPE_CHECKING:
    import torch

NUM_TRAIN_TIMESTEPS = 1000
SIGMA_FLOOR = 1 / NUM_TRAIN_TIMESTEPS
"""The least noise level sigma-sqrt weighs at (diffusers draws sigmas from a 1000-step grid)."""
DISTRIBUTIONS = (
    TimestepDistribution.UNIFORM,
    TimestepDistribution.LOGIT_NORMAL,
    TimestepDistribution.MODE,
    TimestepDistribution.COSMAP,
)
WEIGHTINGS = (LossWeighting.NONE, LossWeighting.SIGMA_SQRT, LossWeighting.COSMAP)


@dataclass(frozen=True)
class ResolutionShift:
    """mu as a linear function of the image's token count, between two anchor points (by default those of
    `FlowMatchEulerDiscreteScheduler`'s config; a family's scheduler config may set others)."""

    base_seq_len: int = 256
    max_seq_len: int = 4096
    base_shift: float = 0.5
    max_shift: float = 1.15

    def mu(self, image_seq_len: int) -> float:
        slope = (self.max_shift - self.base_shift) / (self.max_seq_len - self.base_seq_len)
        return image_seq_len * slope + (self.base_shift - slope * self.base_seq_len)

    @classmethod
    def from_scheduler_config(cls, config: dict[str, Any]) -> ResolutionShift:
        defaults = cls()
        return cls(
            base_seq_len=int(_setting(config, "base_image_seq_len", defaults.base_seq_len)),
            max_seq_len=int(_setting(config, "max_image_seq_len", defaults.max_seq_len)),
            base_shift=float(_setting(config, "base_shift", defaults.base_shift)),
            max_shift=float(_setting(config, "max_shift", defaults.max_shift)),
        )


def _setting(config: dict[str, Any], key: str, default: float) -> float:
    """A scheduler config's value, the default only where it is absent or null (a shift of 0 is a value)."""
    value = config.get(key)
    return default if value is None else float(value)


def sample_density(config: TimestepConfig, batch_size: int, generator: torch.Generator) -> torch.Tensor:
    """u in (0, 1), float32 [B] on the generator's device, one draw per sample."""
    import torch

    device = generator.device
    distribution = config.distribution
    if distribution is TimestepDistribution.LOGIT_NORMAL:
        normal = torch.normal(mean=config.mean, std=config.std, size=(batch_size,), device=device, generator=generator)
        return torch.sigmoid(normal)
    unit = torch.rand(size=(batch_size,), device=device, generator=generator)
    if distribution is TimestepDistribution.MODE:
        return 1 - unit - config.mode_scale * (torch.cos(math.pi * unit / 2) ** 2 - 1 + unit)
    if distribution is TimestepDistribution.COSMAP:
        return 1 - 1 / (torch.tan(math.pi * unit / 2) + 1)
    if distribution is TimestepDistribution.UNIFORM:
        return unit
    raise UserError(
        f"noise.timesteps.distribution {distribution.value!r} is not a flow-matching distribution",
        hint=f"Use one of: {', '.join(d.value for d in DISTRIBUTIONS)}.",
    )


def limit_strength(unit: torch.Tensor, config: TimestepConfig) -> torch.Tensor:
    return config.min_strength + unit * (config.max_strength - config.min_strength)


def shift_sigmas(unit: torch.Tensor, shift: float) -> torch.Tensor:
    """The fixed shift of `FlowMatchEulerDiscreteScheduler(shift=s)`: s u / (1 + (s - 1) u)."""
    return shift * unit / (1 + (shift - 1) * unit)


def resolution_shift_sigmas(unit: torch.Tensor, mu: float) -> torch.Tensor:
    """The exponential time shift with sigma = 1: e^mu / (e^mu + 1/u - 1)."""
    return math.exp(mu) / (math.exp(mu) + (1 / unit - 1))


def loss_weights(sigmas: torch.Tensor, weighting: LossWeighting) -> torch.Tensor:
    """Per-sample loss weights of the SD 3 paper: sigma_sqrt sigma^-2, cosmap 2 / (pi (1 - 2s + 2s^2))."""
    import torch

    if weighting is LossWeighting.SIGMA_SQRT:
        # u is drawn from [0, 1), so sigma can be 0 exactly; the floor is the least sigma of a 1000-step schedule
        return (sigmas.clamp(min=SIGMA_FLOOR) ** -2.0).float()
    if weighting is LossWeighting.COSMAP:
        return 2 / (math.pi * (1 - 2 * sigmas + 2 * sigmas**2))
    if weighting is LossWeighting.NONE:
        return torch.ones_like(sigmas)
    raise UserError(
        f"loss.weighting {weighting.value!r} is not a flow-matching weighting",
        hint=f"Use one of: {', '.join(w.value for w in WEIGHTINGS)}.",
    )


class FlowMatchingObjective:
    """Turns clean latents into a flow-matching example and weighs its loss, per the config.

    Random draws, all from the caller's generator, in a fixed order: noise, offset noise, the noise
    level, input perturbation.
    """

    def __init__(self, noise: NoiseConfig, loss: LossConfig, scheduler_config: dict[str, Any]) -> None:
        self.noise = noise
        self.loss_config = loss
        self.shift = float(noise.shift if noise.shift is not None else scheduler_config.get("shift", 1.0))
        dynamic = noise.dynamic_shift
        self.dynamic = bool(scheduler_config.get("use_dynamic_shifting", False)) if dynamic is None else dynamic
        self.resolution_shift = ResolutionShift.from_scheduler_config(scheduler_config)

    def sigmas(self, batch_size: int, generator: torch.Generator, image_seq_len: int) -> torch.Tensor:
        unit = limit_strength(sample_density(self.noise.timesteps, batch_size, generator), self.noise.timesteps)
        if self.dynamic:
            return resolution_shift_sigmas(unit, self.resolution_shift.mu(image_seq_len))
        return shift_sigmas(unit, self.shift)

    def __call__(self, latents: torch.Tensor, generator: torch.Generator, *, image_seq_len: int) -> Noised:
        import torch

        x0 = latents.float()
        batch, channels = x0.shape[:2]
        device = generator.device

        def normal(*shape: int) -> torch.Tensor:
            return torch.randn(shape, generator=generator, device=device).to(x0.device)

        noise = normal(*x0.shape)
        if self.noise.offset > 0:
            noise = noise + self.noise.offset * normal(batch, channels, *([1] * (x0.ndim - 2)))
        sigmas = self.sigmas(batch, generator, image_seq_len).to(x0.device)
        model_noise = noise
        if self.noise.input_perturbation > 0:
            model_noise = noise + self.noise.input_perturbation * normal(*x0.shape)
        sigma = sigmas.reshape(-1, *([1] * (x0.ndim - 1)))
        return Noised(
            noisy=(1 - sigma) * x0 + sigma * model_noise,
            target=noise - x0,
            timesteps=sigmas * NUM_TRAIN_TIMESTEPS,
            noise=noise,
            weights=loss_weights(sigmas, self.loss_config.weighting),
        )
