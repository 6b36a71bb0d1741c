"""Config sections for how training noises its inputs and scores the prediction.

`noise` decides which timesteps are trained and what noise is added; `loss` decides how the
prediction is compared with the target and how each sample counts. The model's prediction type
(epsilon or v) belongs to the model section, because it is a property of the weights.
"""

from __future__ import annotations

import math
from enum import Enum

from pydantic import Field, model_validator

from onetrainer.util.config.base import Section

MODE_SCALE_MAX = 2 / (math.pi - 2)
"""Beyond it the mode density is no longer monotone, and further out it draws noise levels outside [0, 1]."""


class TimestepDistribution(str, Enum):
    """How noise levels are drawn; which ones apply depends on the model's objective."""

    UNIFORM = "uniform"
    LOGIT_NORMAL = "logit-normal"
    SIGMOID = "sigmoid"
    """DDPM only."""
    MODE = "mode"
    """Flow matching only (SD 3 paper)."""
    COSMAP = "cosmap"
    """Flow matching only (SD 3 paper)."""


class TimestepConfig(Section):
    distribution: TimestepDistribution = Field(
        TimestepDistribution.UNIFORM,
        description="How training timesteps are drawn: uniform, logit-normal; DDPM models also sigmoid-weighted, "
        "flow-matching models also mode and cosmap.",
    )
    mean: float = Field(0.0, description="logit-normal: mean of the normal before the sigmoid (>0 favours noise).")
    std: float = Field(1.0, gt=0, description="logit-normal: standard deviation of the normal before the sigmoid.")
    center: float = Field(0.5, ge=0, le=1, description="sigmoid: where (0..1 of the range) the weight is half.")
    steepness: float = Field(
        10.0, description="sigmoid: slope of the weight curve; positive favours noisier, negative cleaner."
    )
    mode_scale: float = Field(
        1.29,
        ge=-1,
        le=MODE_SCALE_MAX,
        description="mode (flow matching): how strongly the mode is favoured; -1 to 2/(pi-2) (about 1.75), where "
        "the density stays monotone and inside the noise levels (SD 3's paper).",
    )
    min_strength: float = Field(0.0, ge=0, lt=1, description="Lowest noise level trained, as a fraction of all.")
    max_strength: float = Field(1.0, gt=0, le=1, description="Highest noise level trained, as a fraction of all.")

    @model_validator(mode="after")
    def _ordered(self) -> TimestepConfig:
        if self.min_strength >= self.max_strength:
            raise ValueError(f"min_strength ({self.min_strength}) must be below max_strength ({self.max_strength})")
        return self


class NoiseConfig(Section):
    offset: float = Field(
        0.0, ge=0, le=1, description="Noise offset: per-channel constant noise, helps very dark/bright images."
    )
    input_perturbation: float = Field(
        0.0, ge=0, le=1, description="Extra noise on the model input only (not the target); 0.1 is typical."
    )
    zero_terminal_snr: bool = Field(
        False, description="Rescale the noise schedule so the last timestep is pure noise (use with v-prediction)."
    )
    timesteps: TimestepConfig = Field(default_factory=TimestepConfig, description="Timestep sampling.")
    shift: float | None = Field(
        None,
        gt=0,
        description="Flow matching: shift noise levels towards noise by this factor (SD 3 trains with 3); "
        "null: the model's own scheduler value.",
    )
    dynamic_shift: bool | None = Field(
        None,
        description="Flow matching: shift by the image's token count instead of a fixed factor (the scheduler's "
        "use_dynamic_shifting); null: as the model's scheduler says.",
    )


class LossType(str, Enum):
    MSE = "mse"
    L1 = "l1"
    HUBER = "huber"
    LOG_COSH = "log-cosh"


class LossWeighting(str, Enum):
    NONE = "none"
    MIN_SNR_GAMMA = "min-snr-gamma"
    """DDPM only."""
    DEBIASED = "debiased"
    """DDPM only."""
    SIGMA_SQRT = "sigma-sqrt"
    """Flow matching only (SD 3 paper)."""
    COSMAP = "cosmap"
    """Flow matching only (SD 3 paper)."""


class MaskedLossConfig(Section):
    enabled: bool = Field(False, description="Weight the loss by the image masks (white = train).")
    unmasked_weight: float = Field(
        0.1, ge=0, le=1, description="Loss weight outside the mask (0 ignores it, 1 ignores the mask)."
    )
    normalize_area: bool = Field(
        False, description="Divide by the weighted area, so small masks count as much as large ones."
    )
    unmasked_probability: float = Field(
        0.0,
        ge=0,
        le=1,
        description="Share of samples trained without their mask (the whole image), drawn per sample and step; "
        "OneTrainer's default is 0.1.",
    )


class LossConfig(Section):
    type: LossType = Field(LossType.MSE, description="Per-element loss: mse, l1, huber or log-cosh.")
    huber_delta: float = Field(1.0, gt=0, description="huber: where the loss turns from quadratic to linear.")
    weighting: LossWeighting = Field(
        LossWeighting.NONE,
        description="Per-timestep weight: none; DDPM models min-snr-gamma (Hang et al.) or debiased (1/sqrt(SNR), "
        "v-prediction 1/sqrt(SNR+1) as OneTrainer; SNR capped at 1000); "
        "flow-matching models sigma-sqrt or cosmap (SD 3 paper).",
    )
    gamma: float = Field(5.0, gt=0, description="min-snr-gamma: the SNR cap.")
    masked: MaskedLossConfig = Field(default_factory=MaskedLossConfig, description="Masked training.")
