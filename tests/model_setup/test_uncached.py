"""An uncached batch (`data.cache: false`: pixels and captions) is encoded inside the step as the cache would
have encoded it, for every family: same latents and conditioning, so the same prediction, also under the
step's autocast (which the encoders must not run under)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch

from onetrainer.model_setup.diffusion import DiffusionSetup
from onetrainer.util.family import FamilySpec, families, get_family

TINY = sorted((spec.name, sorted(spec.tiny)[0]) for spec in families() if spec.tiny)


@pytest.mark.parametrize(("family", "tiny"), TINY)
def test_an_uncached_batch_predicts_what_its_cached_encoding_does_under_autocast(
    family: str,
    tiny: str,
    tiny_setup: Callable[..., DiffusionSetup],
    latent_batch: Callable[[FamilySpec], dict[str, Any]],
) -> None:
    setup = tiny_setup(family, tiny, method="lora", lora={"rank": 4})
    uncached = {key: value for key, value in latent_batch(get_family(family)).items() if key != "latents"}
    uncached["pixels"] = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0)) * 2 - 1
    vae, conditioner = setup.image_encoder(), setup.text_encoder()
    assert conditioner is not None
    vae.load()
    conditioner.load()
    cached = {key: value for key, value in uncached.items() if key != "pixels"}
    cached |= vae.encode(uncached["pixels"]) | conditioner.encode(uncached["captions"])

    predictions = []
    for batch in (cached, uncached):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            predictions.append(setup.predict(batch, torch.Generator().manual_seed(1))["prediction"])
    assert torch.equal(predictions[0], predictions[1])

    with torch.autocast("cpu", dtype=torch.bfloat16):
        latents = vae.encode_on_device(uncached["pixels"])
        conditioning = conditioner.encode_on_device(uncached["captions"])
    assert latents.dtype == torch.float32
    assert torch.equal(latents, cached["latents"]), "the VAE ran in its own dtype, not the autocast's"
    assert all(torch.equal(value, cached[key]) for key, value in conditioning.items())
