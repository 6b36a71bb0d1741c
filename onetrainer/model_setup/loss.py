"""The training loss of every objective: per-element loss, masks, objective and per-sample weights.

Order of reduction, for prediction p and target y of shape [B, C, h, w]:
  l = loss_type(p - y)                                  element-wise
  m = unmasked + (1 - unmasked) * mask                  mask downsampled to h x w (masked training only;
                                                        1 for the samples drawn to train without their mask)
  per-sample L_b = mean(l * m)  (or mean(l * m) / mean(m) when normalising by the masked area)
  total = mean_b( L_b * objective_weight_b * loss_weight_b )
Element losses: mse d^2, l1 |d|, huber 0.5 d^2 if |d| <= delta else delta (|d| - delta / 2),
log-cosh log(cosh(d)). The objective weights (SNR weightings of DDPM, the SD 3 weightings of flow
matching) come from the objective with the noised example.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from onetrainer.util.config.loss import LossConfig, LossType

if TYPE_CHECKING:
    import torch


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


def mask_weights(mask: torch.Tensor, size: tuple[int, int], unmasked_weight: float) -> torch.Tensor:
    """[B, 1, h, w] weights from a [B, 1, H, W] pixel mask (area-averaged to the latent grid)."""
    import torch

    small = torch.nn.functional.adaptive_avg_pool2d(mask.float(), size)
    return unmasked_weight + (1 - unmasked_weight) * small


def diffusion_loss(
    prediction: torch.Tensor,
    target: torch.Tensor,
    weights: torch.Tensor,
    config: LossConfig,
    *,
    mask: torch.Tensor | None = None,
    loss_weight: torch.Tensor | None = None,
    unmasked: torch.Tensor | None = None,
) -> torch.Tensor:
    """The scalar loss; `weights` are the objective's per-sample weights; `mask` is used only when masked
    training is on and the batch carries one, except for the samples `unmasked` (bool [B]) marks. Batch
    tensors reach the device without blocking the host (the data loader pins them on CUDA)."""
    import torch

    elements = elementwise_loss(prediction, target, config.type, config.huber_delta)
    dims = tuple(range(1, elements.ndim))
    if config.masked.enabled and mask is not None:
        height, width = elements.shape[-2:]
        weights_map = mask_weights(
            mask.to(elements.device, non_blocking=True), (height, width), config.masked.unmasked_weight
        )
        if unmasked is not None:
            whole = unmasked.to(elements.device).reshape(-1, *([1] * (weights_map.ndim - 1)))
            weights_map = torch.where(whole, torch.ones_like(weights_map), weights_map)
        per_sample = (elements * weights_map).mean(dim=dims)
        if config.masked.normalize_area:
            per_sample = per_sample / weights_map.mean(dim=dims).clamp(min=1e-8)
    else:
        per_sample = elements.mean(dim=dims)
    per_sample = per_sample * weights.to(per_sample.device, per_sample.dtype, non_blocking=True)
    if loss_weight is not None:
        per_sample = per_sample * loss_weight.to(per_sample.device, per_sample.dtype, non_blocking=True)
    return per_sample.mean()
