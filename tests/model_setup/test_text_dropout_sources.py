"""Each family's conditioner says what of its output each text encoder alone computes (`sources`), which is what
`parts.<encoder>.dropout` zeroes: it must be exactly that encoder's share, no more and no less."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import TYPE_CHECKING

import pytest

from onetrainer.util.family import FamilySpec, families

if TYPE_CHECKING:
    from onetrainer.model.diffusion import DiffusionModel

CAPTIONS = ["a red circle", "a blue square on a green triangle"]


@pytest.mark.parametrize("spec", [spec for spec in families() if spec.tiny], ids=lambda spec: spec.name)
def test_each_encoders_shares_are_exactly_what_its_weights_change(
    spec: FamilySpec, tiny_base: Callable[[str], DiffusionModel]
) -> None:
    """Perturbing one encoder's weights changes every share it names and nothing outside them (SDXL: CLIP-L's
    channels of the joined states; bigG's channels and the pooled vector)."""
    import torch

    from onetrainer.util.config.loader import validate
    from onetrainer.util.registry import ModuleKind, lookup

    tiny = next(iter(spec.tiny))
    model = copy.deepcopy(tiny_base(tiny))
    config = validate({"model": {"type": spec.name, "base": f"tiny:{tiny}"}}, check_paths=False)
    setup = lookup(ModuleKind.SETUP, spec.name)(model, config)
    skips = dict.fromkeys(model.text_encoder_names(), 0)
    conditioner = setup.hooks.conditioner(model, layer_skip=skips, device=torch.device("cpu"))
    assert set(conditioner.sources) == set(model.text_encoder_names())
    conditioner.load()  # (evaluation mode: T5's dropout would change its output at every call)
    before = conditioner.encode(CAPTIONS)
    noise = torch.Generator().manual_seed(0)  # (seeded: a channel the draw happened not to move would fail it)
    for name in model.text_encoder_names():
        with torch.no_grad():
            for param in model.components[name].parameters():
                param.add_(torch.randn(param.shape, generator=noise, dtype=param.dtype) * 0.1)
        after = conditioner.encode(CAPTIONS)
        for key in conditioner.output_keys:
            changed = (after[key] != before[key]).flatten(0, -2).any(dim=0)
            owned = torch.zeros_like(changed)
            for share in conditioner.sources[name]:
                if share.key == key:
                    start, stop = share.channels or (0, changed.numel())
                    owned[start:stop] = True
                    assert changed[start:stop].all(), f"{name} does not compute all of {share}"
            assert not changed[~owned].any(), f"{name} changes {key} outside its shares"
        before = after
