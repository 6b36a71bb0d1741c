"""Training setups of the tiny models on the CPU, and a batch that any family's setup trains on.

Each tiny model is loaded once a session; every setup trains a deep copy of it, so tests do not see each
other's training.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    import torch

    from onetrainer.model.diffusion import DiffusionModel
    from onetrainer.model_setup.diffusion import DiffusionSetup
    from onetrainer.util.family import FamilySpec


@pytest.fixture(scope="session")
def tiny_base() -> Callable[[str], DiffusionModel]:
    """`tiny_base(kind)`: the model `tiny:<kind>`, loaded once a session and shared: copy it before changing it."""
    import functools

    from onetrainer.model_loader.pipeline import load_model

    @functools.cache
    def load(kind: str) -> DiffusionModel:
        return load_model(f"tiny:{kind}")

    return load


@pytest.fixture(scope="session")
def tiny_setup(tiny_base: Callable[[str], DiffusionModel]) -> Callable[..., DiffusionSetup]:
    """`tiny_setup(family, tiny, train_dtype=torch.float32, **settings)`: `family`'s training setup of the
    config `settings` (paths unchecked) on a fresh copy of `tiny:<tiny>`, prepared on the CPU."""
    import copy

    import torch

    from onetrainer.util.config.loader import validate
    from onetrainer.util.registry import ModuleKind, lookup

    def build(family: str, tiny: str, train_dtype: torch.dtype = torch.float32, **settings: Any) -> DiffusionSetup:
        config = validate({"model": {"type": family, "base": f"tiny:{tiny}"}, **settings}, check_paths=False)
        setup: DiffusionSetup = lookup(ModuleKind.SETUP, family)(copy.deepcopy(tiny_base(tiny)), config)
        setup.prepare("cpu", train_dtype)
        return setup

    return build


@pytest.fixture(scope="session")
def latent_batch() -> Callable[[FamilySpec], dict[str, Any]]:
    """`latent_batch(spec)`: the same two captioned 8x8 latents of `spec`'s channels at every call, with the
    size conditioning SDXL reads (the other families ignore it)."""
    import torch

    def batch(spec: FamilySpec) -> dict[str, Any]:
        generator = torch.Generator().manual_seed(0)
        return {
            "latents": torch.randn(2, spec.latent_channels, 8, 8, generator=generator),
            "captions": ["a red circle", "a blue square"],
            "original_size": torch.tensor([(64, 64)] * 2),
            "crop_top_left": torch.tensor([(0, 0)] * 2),
            "target_size": torch.tensor([(64, 64)] * 2),
        }

    return batch
