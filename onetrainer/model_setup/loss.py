"""The training loss of diffusion families: per-element loss, masks, per-timestep and per-sample weights.

Order of reduction, for prediction p and target y of shape [B, C, h, w]:
  l = loss_type(p - y)                                  element-wise
  m = unmasked + (1 - unmasked) * mask                  mask downsampled to h x w (masked training only)
  per-sample L_b = mean(l * m)  (or mean(l * m) / mean(m) when normalising by the masked area)
  total = mean_b( L_b * snr_weight(t_b) * loss_weight_b )
Element losses: mse d^2, l1 |d|, huber 0.5 d^2 if |d| <= delta else delta (|d| - delta / 2),
log-cosh log(cosh(d)). SNR weights: min-snr-gamma min(SNR, g) / SNR for epsilon and
min(SNR, g) / (SNR + 1) for v-prediction; debiased 1 / sqrt(SNR).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from onetrainer.util.config.loss import LossConfig, LossType, LossWeighting

if TYPE_CHECKING:
    import torch

SNR_FLOOR = 1e-3
"""SNR is clamped to at least this before weighting: a zero-terminal-SNR schedule reaches 0 at its last
step, where 1/SNR is infinite. Ordinary SD schedules never go below about 0.005."""


def elementwise_loss(
    prediction: torch.Tensor, target: torch.Tensor, kind: LossType, delta: float = 1.0
) -> torch.Tensor:
    import torch

    diff = prediction.float() - target.float()
    if kind is LossType.MSE:
        return diff.square()
    if kind is LossType.L1:
        return diff.abs()
    if kind is LossType.HUBER:
        return torch.nn.functional.huber_loss(diff, torch.zeros_like(diff), reduction="none", delta=delta)
    # log(cosh(d)) = d + softplus(-2d) - log 2, which does not overflow for large |d|.
    return diff + torch.nn.functional.softplus(-2 * diff) - math.log(2.0)


def timestep_weights(snr: torch.Tensor, weighting: LossWeighting, gamma: float, prediction_type: str) -> torch.Tensor:
    import torch

    if weighting is LossWeighting.NONE:
        return torch.ones_like(snr)
    snr = snr.clamp(min=SNR_FLOOR)
    if weighting is LossWeighting.MIN_SNR_GAMMA:
        capped = snr.clamp(max=gamma)
        return capped / (snr + 1) if prediction_type == "v_prediction" else capped / snr
    return 1 / snr.sqrt()


def mask_weights(mask: torch.Tensor, size: tuple[int, int], unmasked_weight: float) -> torch.Tensor:
    """[B, 1, h, w] weights from a [B, 1, H, W] pixel mask (area-averaged to the latent grid)."""
    import torch

    small = torch.nn.functional.adaptive_avg_pool2d(mask.float(), size)
    return unmasked_weight + (1 - unmasked_weight) * small


def diffusion_loss(
    prediction: torch.Tensor,
    target: torch.Tensor,
    snr: torch.Tensor,
    config: LossConfig,
    prediction_type: str,
    *,
    mask: torch.Tensor | None = None,
    loss_weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """The scalar loss; `mask` is used only when masked training is on and the batch carries one."""
    elements = elementwise_loss(prediction, target, config.type, config.huber_delta)
    dims = tuple(range(1, elements.ndim))
    if config.masked.enabled and mask is not None:
        weights = mask_weights(mask.to(elements.device), tuple(elements.shape[-2:]), config.masked.unmasked_weight)
        per_sample = (elements * weights).mean(dim=dims)
        if config.masked.normalize_area:
            per_sample = per_sample / weights.mean(dim=dims).clamp(min=1e-8)
    else:
        per_sample = elements.mean(dim=dims)
    per_sample = per_sample * timestep_weights(
        snr.to(per_sample.device), config.weighting, config.gamma, prediction_type
    )
    if loss_weight is not None:
        per_sample = per_sample * loss_weight.to(per_sample.device, per_sample.dtype)
    return per_sample.mean()
