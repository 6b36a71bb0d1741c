"""Models carrying a LoRA that changes what they draw, for comparing our images with diffusers'."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from onetrainer.model.diffusion import DiffusionModel


@pytest.fixture(scope="session")
def with_random_lora() -> Callable[[DiffusionModel, tuple[str, ...]], DiffusionModel]:
    """`with_random_lora(model, parts)`: `model` with a rank-4 (alpha 2) LoRA on the attention and MLP layers of
    `parts`, every factor random (seed 0): a fresh LoRA's up factor is zero, so a loader that dropped or
    misread it would draw the same image."""
    import torch

    from onetrainer.model.adapters.lora import LoraTargets, inject_lora

    def add(model: DiffusionModel, parts: tuple[str, ...]) -> DiffusionModel:
        targets = {name: LoraTargets("attn-mlp", presets=model.spec.component(name).lora_presets) for name in parts}
        model.adapters.lora = inject_lora(model, kind="lora", rank=4, alpha=2.0, targets=targets)
        generator = torch.Generator().manual_seed(0)
        for name in parts:
            for key, parameter in model.components[name].named_parameters():
                if "lora_" in key:
                    parameter.data = torch.randn(parameter.shape, generator=generator) * 0.2
        return model

    return add
