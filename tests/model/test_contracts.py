"""Every registered family's loader, setup, sampler and saver meet `model.contracts`, statically and at run time.

mypy checks this file in CI (`[tool.mypy] files` names it): `register` and `lookup` are typed per kind, so
the `assert_type` lines fail the type check if the registry hands out `Any` again, and the annotated
assignments fail if a shared piece (`DiffusionSetup`, `TextConditioner`, the samplers and the saver)
stops matching its protocol. At run time the same objects, built for each family's tiny model, must
have every member their protocol names, and a conditioner must return the keys it declares.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pytest
import torch
from typing_extensions import assert_type, get_protocol_members

from onetrainer.model.contracts import (
    Conditioner,
    FamilyHooks,
    LoaderFactory,
    ModelLoader,
    Sampler,
    SamplerFactory,
    Saver,
    SaverFactory,
    SetupFactory,
    TrainingSetup,
)
from onetrainer.util.config.loader import validate
from onetrainer.util.family import get_family
from onetrainer.util.registry import ModuleKind, lookup, supporting

if TYPE_CHECKING:
    from onetrainer.util.config.schema import TrainConfig

FAMILIES = supporting(list(ModuleKind))
"""The families that registered all four modules: the ones a user can train and sample."""


def _config(family: str) -> TrainConfig:
    tiny = sorted(get_family(family).tiny)[0]
    return validate({"model": {"type": family, "base": f"tiny:{tiny}"}}, check_paths=False)


def _missing(instance: object, protocol: type) -> list[str]:
    return sorted(name for name in get_protocol_members(protocol) if not hasattr(instance, name))


def test_every_family_that_trains_is_checked() -> None:
    assert FAMILIES, "no family registered a loader, setup, sampler and saver"
    assert set(FAMILIES) >= {"sd15", "sd2", "sdxl"}


@pytest.mark.parametrize("family", FAMILIES)
def test_the_registry_hands_out_the_contract_types(family: str) -> None:
    make_loader = lookup(ModuleKind.LOADER, family)
    make_setup = lookup(ModuleKind.SETUP, family)
    make_sampler = lookup(ModuleKind.SAMPLER, family)
    make_saver = lookup(ModuleKind.SAVER, family)
    assert_type(make_loader, LoaderFactory)
    assert_type(make_setup, SetupFactory)
    assert_type(make_sampler, SamplerFactory)
    assert_type(make_saver, SaverFactory)
    factories: list[Callable[..., object]] = [make_loader, make_setup, make_sampler, make_saver]
    assert all(callable(factory) for factory in factories)


@dataclass
class Built:
    """One family's registered modules, built for its tiny model the way `build_parts` builds them."""

    loader: ModelLoader
    setup: TrainingSetup
    conditioner: Conditioner
    sampler: Sampler
    saver: Saver


@pytest.fixture(scope="module", params=FAMILIES)
def built(request: pytest.FixtureRequest) -> Built:
    family: str = request.param
    config = _config(family)
    loader = lookup(ModuleKind.LOADER, family)()
    model = loader.load(config.model)
    setup = lookup(ModuleKind.SETUP, family)(model, config)
    setup.prepare("cpu", torch.float32)
    conditioner = setup.text_encoder()
    assert conditioner is not None, "the default LoRA run trains no text encoder, so captions are cached"
    sampler = lookup(ModuleKind.SAMPLER, family)(model, layer_skip={})
    return Built(loader, setup, conditioner, sampler, lookup(ModuleKind.SAVER, family)())


def test_each_family_module_has_every_member_of_its_protocol(built: Built) -> None:
    checked: list[tuple[object, type]] = [
        (built.loader, ModelLoader),
        (built.setup, TrainingSetup),
        (built.conditioner, Conditioner),
        (built.sampler, Sampler),
        (built.saver, Saver),
    ]
    missing = {protocol.__name__: _missing(instance, protocol) for instance, protocol in checked}
    assert missing == {protocol.__name__: [] for _, protocol in checked}
    assert built.sampler.default_size() > 0


def test_a_conditioner_returns_exactly_the_keys_it_declares(built: Built) -> None:
    keys = set(built.conditioner.output_keys)
    assert keys
    assert set(built.conditioner.encode(["a red circle"])) == keys
    assert set(built.conditioner.encode_for_training(["a red circle"])) == keys


def test_sd_is_built_from_the_shared_pieces_which_are_their_protocols() -> None:
    """The shared implementations, typed as their protocols: when one drifts, mypy fails here first."""
    from onetrainer.model_loader.pipeline import DiffusersLoader
    from onetrainer.model_loader.single_file import read_single_file
    from onetrainer.model_saver.diffusion import DiffusionSaver
    from onetrainer.model_setup.conditioning import TextConditioner
    from onetrainer.model_setup.diffusion import DiffusionSetup
    from onetrainer.model_setup.stable_diffusion import StableDiffusionHooks

    config = _config("sd15")
    loader: ModelLoader = DiffusersLoader(read_single_file=read_single_file)
    model = loader.load(config.model)
    hooks: FamilyHooks = StableDiffusionHooks()
    setup: TrainingSetup = DiffusionSetup(model, config, hooks)
    saver: Saver = DiffusionSaver()
    setup.prepare("cpu", torch.float32)
    conditioner: Conditioner | None = setup.text_encoder()
    assert isinstance(conditioner, TextConditioner)
    assert isinstance(lookup(ModuleKind.LOADER, "sd15")(), type(loader))
    assert isinstance(lookup(ModuleKind.SETUP, "sd15")(model, config), type(setup))
    assert isinstance(lookup(ModuleKind.SAVER, "sd15")(), type(saver))
