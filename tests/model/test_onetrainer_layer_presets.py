"""OneTrainer's LoRA layer filters on our tiny models: each family's named presets adapt the layers of ours they
claim to (`OneTrainerLayerPreset.same_as`), and the filter `onetrainer export` writes for a preset of ours adapts
that preset's layers in OneTrainer."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import pytest

from onetrainer.util.config.adapters import LoraTargets
from onetrainer.util.family import FamilySpec, families

SPECS = [spec for spec in families() if spec.tiny and spec.onetrainer_layer_presets]


def _onetrainer_selects(module: Any, layer_filter: str, *, regex: bool) -> set[str]:
    """The layers OneTrainer adapts: its linear and convolution layers whose path holds one of the filter's
    comma-separated substrings (or matches one of its regexes)."""
    import torch

    items = [item.strip() for item in layer_filter.split(",") if item.strip()]
    matches: Callable[[str, str], bool] = (
        (lambda item, name: re.search(item, name) is not None) if regex else (lambda item, name: item in name)
    )
    return {
        name
        for name, child in module.named_modules()
        if isinstance(child, torch.nn.Linear | torch.nn.Conv2d) and any(matches(item, name) for item in items)
    }


def _ours(spec: FamilySpec, module: Any, preset: str) -> set[str]:
    from onetrainer.model.adapters.targets import target_modules

    denoiser = spec.denoiser
    unused = denoiser.unused_in(module)
    return set(target_modules(module, denoiser.name, denoiser.lora_presets, preset, unused=unused))


@pytest.fixture(scope="module")
def denoiser() -> Callable[[FamilySpec], Any]:
    import functools

    from onetrainer.model_loader.pipeline import load_model

    @functools.cache
    def load(tiny: str) -> Any:
        return load_model(f"tiny:{tiny}")

    return lambda spec: load(next(iter(spec.tiny))).components[spec.denoiser.name]


@pytest.mark.parametrize("spec", SPECS, ids=lambda spec: spec.name)
def test_a_onetrainer_preset_adapts_the_layers_of_the_preset_of_ours_it_names(spec, denoiser):
    module = denoiser(spec)
    unused = spec.denoiser.unused_in(module)  # an adapter there never trains
    for name, preset in spec.onetrainer_layer_presets.items():
        theirs = _onetrainer_selects(module, preset.layer_filter, regex=False) - unused
        same = [target.value for target in LoraTargets if _ours(spec, module, target.value) == theirs]
        assert same == ([preset.same_as] if preset.same_as else []), name


@pytest.mark.parametrize("spec", SPECS, ids=lambda spec: spec.name)
def test_the_exported_filter_of_a_preset_of_ours_adapts_its_layers_in_onetrainer(spec, denoiser):
    from onetrainer.util.config.onetrainer_json.import_adapters import preset_filter

    module = denoiser(spec)
    for target in LoraTargets:
        layer_filter = preset_filter(spec, target.value)
        assert "," not in layer_filter, "one regex: OneTrainer refuses a list item that matches nothing"
        theirs = _onetrainer_selects(module, layer_filter, regex=True) - spec.denoiser.unused_in(module)
        assert theirs == _ours(spec, module, target.value), target.value
