"""The discrete-time DDPM objective: timesteps, noise, targets and SNR loss weights.

Each piece is a plain function of tensors so the math can be checked against its formula;
`DdpmObjective` composes them in a fixed order of random draws (noise, offset noise, timesteps,
perturbation), all from the caller's generator, so a seed fixes a training step exactly.

With abar_t the cumulative product of (1 - beta) at timestep t:
  x_t = sqrt(abar_t) * x0 + sqrt(1 - abar_t) * eps
  epsilon target: eps;  v target: sqrt(abar_t) * eps - sqrt(1 - abar_t) * x0;  sample target: x0
  SNR_t = abar_t / (1 - abar_t)
SNR weights: min-snr-gamma min(SNR, g) / SNR for epsilon, min(SNR, g) / (SNR + 1) for v-prediction and
min(SNR, g) for sample prediction; debiased 1 / sqrt(SNR).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from onetrainer.model_setup.objective import Noised
from onetrainer.util.config.loss import LossConfig, LossWeighting, NoiseConfig, TimestepConfig, TimestepDistribution
from onetrainer.util.errors import UserError
from onetrainer.util.family import ZERO_TERMINAL_SNR_SCHEDULE

if TYPE_CHECKING:
    import torch

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")
DISTRIBUTIONS = (TimestepDistribution.UNIFORM, TimestepDistribution.LOGIT_NORMAL, TimestepDistribution.SIGMOID)
WEIGHTINGS = (LossWeighting.NONE, LossWeighting.MIN_SNR_GAMMA, LossWeighting.DEBIASED)
SNR_FLOOR = 1e-3
DEBIASED_SNR_CAP = 1000.0
"""SNR is clamped to at least this before weighting: a zero-terminal-SNR schedule reaches 0 at its last
step, where 1/SNR is infinite. Ordinary schedules never go below about 0.005."""


def rescale_zero_terminal_snr(alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """Lin et al. 2023, Algorithm 1: shift and scale sqrt(abar) so the last step is pure noise.

    The first step keeps its value; the schedule in between is stretched linearly in sqrt(abar).
    """
    root = alphas_cumprod.double().sqrt()
    first, last = root[0].clone(), root[-1].clone()
    root = (root - last) * first / (first - last)
    return (root**2).to(alphas_cumprod.dtype)


def timestep_range(config: TimestepConfig, num_timesteps: int) -> tuple[int, int]:
    """[low, high) of trainable timesteps from the min/max noising strengths."""
    low = min(round(config.min_strength * num_timesteps), num_timesteps - 1)
    high = max(round(config.max_strength * num_timesteps), low + 1)
    return low, high


def sample_timesteps(
    config: TimestepConfig, batch_size: int, num_timesteps: int, generator: torch.Generator
) -> torch.Tensor:
    """Integer timesteps [B] on the generator's device.

    uniform: u ~ U[0, 1); logit-normal: u = sigmoid(mean + std * z), z ~ N(0, 1); then
    t = low + floor(u * (high - low)). sigmoid: each allowed t is drawn with probability proportional
    to sigmoid(steepness * (x_t - center)), x_t its position in (0, 1) within the range.
    """
    import torch

    low, high = timestep_range(config, num_timesteps)
    count = high - low
    device = generator.device
    if config.distribution is TimestepDistribution.SIGMOID:
        position = (torch.arange(count, device=device, dtype=torch.float64) + 0.5) / count
        weights = torch.sigmoid(config.steepness * (position - config.center))
        # by the inverse of the cumulative weights: `multinomial` reads its input on the host for one sample
        cumulative = torch.cumsum(weights, 0)
        draws = torch.rand(batch_size, generator=generator, device=device, dtype=torch.float64) * cumulative[-1]
        return low + torch.searchsorted(cumulative, draws, right=True).clamp_(max=count - 1)
    if config.distribution is TimestepDistribution.LOGIT_NORMAL:
        normal = torch.randn(batch_size, generator=generator, device=device, dtype=torch.float64)
        unit = torch.sigmoid(config.mean + config.std * normal)
    elif config.distribution is TimestepDistribution.UNIFORM:
        unit = torch.rand(batch_size, generator=generator, device=device, dtype=torch.float64)
    else:
        raise UserError(
            f"noise.timesteps.distribution {config.distribution.value!r} is not a distribution of this model's "
            "objective (DDPM)",
            hint=f"Use one of: {', '.join(d.value for d in DISTRIBUTIONS)}.",
        )
    return low + torch.floor(unit * count).long().clamp(max=count - 1)


def add_noise(
    x0: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor, alphas_cumprod: torch.Tensor
) -> torch.Tensor:
    signal, sigma = _coefficients(alphas_cumprod, timesteps, x0.ndim)
    return signal * x0 + sigma * noise


def prediction_target(
    x0: torch.Tensor,
    noise: torch.Tensor,
    timesteps: torch.Tensor,
    alphas_cumprod: torch.Tensor,
    prediction_type: str,
) -> torch.Tensor:
    if prediction_type == "epsilon":
        return noise
    if prediction_type == "v_prediction":
        signal, sigma = _coefficients(alphas_cumprod, timesteps, x0.ndim)
        return signal * noise - sigma * x0
    if prediction_type == "sample":
        return x0
    raise UserError(f"unknown prediction type {prediction_type!r}", hint=f"Use one of {', '.join(PREDICTION_TYPES)}.")


def snr(timesteps: torch.Tensor, alphas_cumprod: torch.Tensor) -> torch.Tensor:
    alpha = alphas_cumprod.to(timesteps.device)[timesteps]
    return alpha / (1 - alpha)


def _coefficients(
    alphas_cumprod: torch.Tensor, timesteps: torch.Tensor, ndim: int
) -> tuple[torch.Tensor, torch.Tensor]:
    alpha = alphas_cumprod.to(timesteps.device)[timesteps].reshape(-1, *([1] * (ndim - 1)))
    return alpha.sqrt(), (1 - alpha).sqrt()


def timestep_weights(snr: torch.Tensor, weighting: LossWeighting, gamma: float, prediction_type: str) -> torch.Tensor:
    import torch

    if weighting is LossWeighting.NONE:
        return torch.ones_like(snr)
    snr = snr.clamp(min=SNR_FLOOR)
    if weighting is LossWeighting.MIN_SNR_GAMMA:
        capped = snr.clamp(max=gamma)
        if prediction_type == "v_prediction":
            return capped / (snr + 1)
        return capped if prediction_type == "sample" else capped / snr
    if weighting is LossWeighting.DEBIASED:
        # Yu et al.'s 1/sqrt(SNR) is an epsilon-loss weight; SNR is capped at 1000 and v-prediction weighs
        # 1/sqrt(SNR + 1), as OneTrainer and sd-scripts do (1/sqrt(SNR) would grow without bound at the noisy
        # end, where a v-loss is already large). A sample loss is an epsilon loss times SNR: sqrt(SNR).
        snr = snr.clamp(max=DEBIASED_SNR_CAP)
        if prediction_type == "v_prediction":
            return 1 / (snr + 1).sqrt()
        return snr.sqrt() if prediction_type == "sample" else 1 / snr.sqrt()
    raise UserError(
        f"loss.weighting {weighting.value!r} is not a weighting of this model's objective (DDPM)",
        hint=f"Use one of: {', '.join(w.value for w in WEIGHTINGS)}.",
    )


class DdpmObjective:
    """Turns clean latents into a DDPM training example and weighs it, per the `noise` and `loss` sections."""

    def __init__(
        self,
        noise: NoiseConfig,
        loss: LossConfig,
        alphas_cumprod: torch.Tensor,
        prediction_type: str,
        device: torch.device | None = None,
    ) -> None:
        import torch

        if prediction_type not in PREDICTION_TYPES:
            raise UserError(f"unknown prediction type {prediction_type!r}")
        schedule = alphas_cumprod.detach().double().cpu()
        if noise.zero_terminal_snr:
            schedule = rescale_zero_terminal_snr(schedule)
        self.config = noise
        self.loss_config = loss
        self.prediction_type = prediction_type
        self.alphas_cumprod = schedule.to(torch.float32)
        self._on_device: dict[torch.device, torch.Tensor] = {}
        if device is not None:
            self.schedule_on(device)

    def schedule_on(self, device: torch.device) -> torch.Tensor:
        """`alphas_cumprod` on `device`, copied once, when the objective is built for the training device: a
        copy from pageable memory makes the host wait for the device, so none may happen inside a step. Kept
        under the device asked for and the copy's own (`cuda` is `cuda:0` once on it)."""
        cached = self._on_device.get(device)
        if cached is None:
            cached = self.alphas_cumprod.to(device)
            self._on_device[device] = self._on_device[cached.device] = cached
        return cached

    @property
    def num_timesteps(self) -> int:
        return int(self.alphas_cumprod.shape[0])

    def __call__(self, latents: torch.Tensor, generator: torch.Generator, *, image_seq_len: int = 0) -> Noised:
        """A training example; `image_seq_len` is unused (no DDPM schedule depends on the resolution)."""
        import torch

        x0 = latents.float()
        batch, channels = x0.shape[:2]
        device = generator.device

        def normal(*shape: int) -> torch.Tensor:
            return torch.randn(shape, generator=generator, device=device).to(x0.device)

        noise = normal(*x0.shape)
        if self.config.offset > 0:
            noise = noise + self.config.offset * normal(batch, channels, *([1] * (x0.ndim - 2)))
        timesteps = sample_timesteps(self.config.timesteps, batch, self.num_timesteps, generator).to(x0.device)
        model_noise = noise
        if self.config.input_perturbation > 0:
            model_noise = noise + self.config.input_perturbation * normal(*x0.shape)
        schedule = self.schedule_on(x0.device)
        loss = self.loss_config
        return Noised(
            noisy=add_noise(x0, model_noise, timesteps, schedule),
            target=prediction_target(x0, noise, timesteps, schedule, self.prediction_type),
            timesteps=timesteps,
            noise=noise,
            weights=timestep_weights(snr(timesteps, schedule), loss.weighting, loss.gamma, self.prediction_type),
        )


def zero_terminal_snr_scheduler(scheduler: Any) -> Any:
    """The model's own DDPM schedule rescaled to zero terminal SNR, with trailing timestep spacing.

    The model's scheduler is replaced (not just the training copy), so previews and saved scheduler
    configs sample the way the model is now trained.
    """
    from diffusers import DDPMScheduler

    return DDPMScheduler.from_config(scheduler.config, **ZERO_TERMINAL_SNR_SCHEDULE)
