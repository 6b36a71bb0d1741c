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


@pytest.fixture(scope="session")
def adamw_losses(latent_batch: Callable[[FamilySpec], dict[str, Any]]) -> Callable[..., list[float]]:
    """`adamw_losses(setup, steps, *, lr, noise_seed=None, autocast=None)`: the losses of `steps` AdamW steps of
    `setup` on `latent_batch`. Step i draws its noise from seed i, or every step from `noise_seed`; the forward
    pass runs under CPU autocast to `autocast` when one is given."""
    import contextlib

    import torch

    def run(
        setup: DiffusionSetup,
        steps: int,
        *,
        lr: float,
        noise_seed: int | None = None,
        autocast: torch.dtype | None = None,
    ) -> list[float]:
        optimizer = torch.optim.AdamW([{"params": g["params"], "lr": lr} for g in setup.parameter_groups()])
        batch = latent_batch(setup.spec)
        setup.train()
        losses = []
        for step in range(steps):
            noise = torch.Generator().manual_seed(step if noise_seed is None else noise_seed)
            precision = contextlib.nullcontext() if autocast is None else torch.autocast("cpu", dtype=autocast)
            with precision:
                loss = setup.loss(setup.predict(batch, noise), batch)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            losses.append(loss.item())
        return losses

    return run


@pytest.fixture(scope="session")
def denoised_conditioning() -> Callable[[DiffusionSetup], dict[str, torch.Tensor]]:
    """`denoised_conditioning(setup)`: a dict that fills, at each of the setup's denoiser calls, with the
    conditioning the denoiser was given (after dropout)."""

    def record(setup: DiffusionSetup) -> dict[str, torch.Tensor]:
        seen: dict[str, torch.Tensor] = {}
        denoise = setup.hooks.denoise

        def recorded(model: Any, noisy: Any, timesteps: Any, conditioning: Any, batch: Any) -> torch.Tensor:
            seen.update(conditioning)
            return denoise(model, noisy, timesteps, conditioning, batch)

        setup.hooks.denoise = recorded  # type: ignore[method-assign]
        return seen

    return record
