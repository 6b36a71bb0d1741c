"""The training objective a family's denoiser learns: how a clean example is noised and what is predicted.

Two objectives cover today's families: discrete-time DDPM (`ddpm.py`: epsilon, v or sample prediction,
SNR weightings, zero-terminal SNR) and flow matching (`flow_matching.py`: rectified flow with
timestep densities, shifts and the SD 3 loss weightings). Both turn latents into a `Noised` example
from the caller's generator; the shared loss (`loss.py`) then compares the prediction with its target
and applies the per-sample `weights` the objective computed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from onetrainer.util.family import Objective

if TYPE_CHECKING:
    import torch

    from onetrainer.util.config.schema import TrainConfig


@dataclass
class Noised:
    noisy: torch.Tensor
    """The denoiser's input x_t (float32)."""
    target: torch.Tensor
    """What the denoiser should predict."""
    timesteps: torch.Tensor
    """The denoiser's time input [B]: integer timesteps (DDPM) or 1000 * sigma (flow matching)."""
    noise: torch.Tensor
    """The noise in the target (with offset, without input perturbation)."""
    weights: torch.Tensor
    """Per-sample loss weights [B] of the objective's weighting (ones when it has none)."""


class TrainingObjective(Protocol):
    def __call__(self, latents: torch.Tensor, generator: torch.Generator, *, image_seq_len: int) -> Noised:
        """A training example from clean latents; `image_seq_len` is the denoiser's token count."""
        ...


def build_objective(
    objective: Objective,
    config: TrainConfig,
    scheduler: Any,
    prediction_type: str | None,
    device: torch.device | None = None,
) -> TrainingObjective:
    """The objective of a family, set up from the run config and the model's own noise schedule, with what it
    keeps on the training `device` put there now."""
    if objective is Objective.FLOW_MATCHING:
        from onetrainer.model_setup.flow_matching import FlowMatchingObjective

        return FlowMatchingObjective(config.noise, config.loss, dict(scheduler.config))
    from onetrainer.model_setup.ddpm import DdpmObjective

    return DdpmObjective(config.noise, config.loss, scheduler.alphas_cumprod, prediction_type or "epsilon", device)
