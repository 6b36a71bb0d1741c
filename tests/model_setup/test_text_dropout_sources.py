"""A family's spec says whether each text encoder's conditioning can be dropped alone; its conditioner agrees."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import pytest

from onetrainer.util.family import FamilySpec, families

if TYPE_CHECKING:
    from onetrainer.model.diffusion import DiffusionModel


@pytest.mark.parametrize("spec", [spec for spec in families() if spec.tiny], ids=lambda spec: spec.name)
def test_the_spec_says_what_the_conditioner_drops_alone(
    spec: FamilySpec, tiny_base: Callable[[str], DiffusionModel]
) -> None:
    """`drops_text_encoders_alone` is read where no model is loaded (`onetrainer import`); the run decides by the
    conditioner's `sources` (what each encoder computes alone), so the two must not drift apart."""
    import torch

    from onetrainer.util.config.loader import validate
    from onetrainer.util.registry import ModuleKind, lookup

    tiny = next(iter(spec.tiny))
    model = tiny_base(tiny)
    config = validate({"model": {"type": spec.name, "base": f"tiny:{tiny}"}}, check_paths=False)
    setup = lookup(ModuleKind.SETUP, spec.name)(model, config)
    skips = dict.fromkeys(model.text_encoder_names(), 0)
    conditioner = setup.hooks.conditioner(model, layer_skip=skips, device=torch.device("cpu"))
    assert (set(conditioner.sources) == set(model.text_encoder_names())) is spec.drops_text_encoders_alone
