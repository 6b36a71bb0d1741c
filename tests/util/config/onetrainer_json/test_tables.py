"""The mapping tables agree with OneTrainer's schema on one side and our optimizers and families on the other."""

import inspect

import pytest

from onetrainer.util.config.onetrainer_json.defaults import concept_defaults, sample_defaults, train_defaults
from onetrainer.util.config.onetrainer_json.tables import (
    ENUM_FIELDS,
    EPS_PAIR,
    NEAREST_OPTIMIZERS,
    OPTIMIZER_ARG_DEFAULTS,
    OPTIMIZER_ARGS,
    OPTIMIZER_NAMES,
    OUTPUT_FORMATS,
    reverse,
)
from onetrainer.util.config.training import Optimizer
from onetrainer.util.family import families

FREE_TEXT = {"model_type", "tag_dropout_mode", "tag_dropout_special_tags_mode"}
"""Strings that look like enum members but are not checked: model types come from the families, and the two
tag-dropout modes are plain text in OneTrainer's schema."""


def _fields(data: dict) -> list[tuple[str, object]]:
    found = []
    for key, value in data.items():
        found += _fields(value) if isinstance(value, dict) else [(key, value)]
    return found


def test_every_enum_field_of_the_defaults_is_listed_with_its_default_among_its_members():
    fields = _fields(train_defaults()) + _fields(concept_defaults()) + _fields(sample_defaults())
    enum_like = {key for key, value in fields if isinstance(value, str) and value.isupper() and value.isidentifier()}
    assert enum_like - FREE_TEXT <= set(ENUM_FIELDS)
    for key, value in fields:
        if key in ENUM_FIELDS and isinstance(value, str):
            assert value in ENUM_FIELDS[key], key


def test_each_familys_sample_defaults_are_onetrainer_sample_settings_with_readable_values():
    for spec in families():
        defaults = sample_defaults(spec.onetrainer_sample_defaults)
        assert set(defaults) == set(sample_defaults()), spec.name
        assert defaults["noise_scheduler"] in ENUM_FIELDS["noise_scheduler"], spec.name


@pytest.mark.parametrize("ours", sorted(OPTIMIZER_ARGS))
def test_every_mapped_optimizer_argument_is_one_our_optimizer_takes(ours):
    from onetrainer.trainer.optimizers import _optimizer_class

    assert Optimizer(ours).value in {*OPTIMIZER_NAMES.values(), *NEAREST_OPTIMIZERS}
    if ours == "adamw8bit":
        pytest.importorskip("bitsandbytes")
    if ours == "adamw8bit_ao":
        pytest.importorskip("torchao")
    accepted = inspect.signature(_optimizer_class(Optimizer(ours)).__init__).parameters
    assert set(OPTIMIZER_ARGS[ours].values()) <= set(accepted)


@pytest.mark.parametrize("ours", sorted(OPTIMIZER_ARGS))
def test_the_argument_defaults_are_what_our_optimizer_uses(ours):
    """Where the config leaves an argument out, our optimizer takes its library's default, unless our build
    always passes one (`_keyword_arguments`: Adafactor's relative_step false)."""
    from onetrainer.trainer.optimizers import _keyword_arguments, _optimizer_class
    from onetrainer.util.config.training import TrainingConfig

    if ours == "adamw8bit":
        pytest.importorskip("bitsandbytes")
    if ours == "adamw8bit_ao":
        pytest.importorskip("torchao")
    signature = inspect.signature(_optimizer_class(Optimizer(ours)).__init__).parameters
    built = _keyword_arguments(TrainingConfig(optimizer=ours), warmup_steps=0)
    arguments = [*OPTIMIZER_ARGS[ours].values(), *(["eps"] if ours in EPS_PAIR else [])]
    assert sorted(OPTIMIZER_ARG_DEFAULTS[ours]) == sorted(arguments)
    for argument in arguments:
        used = built.get(argument, signature[argument].default)
        assert OPTIMIZER_ARG_DEFAULTS[ours][argument] == (list(used) if isinstance(used, tuple) else used), argument


def test_each_of_our_output_formats_exports_to_one_onetrainer_format_that_imports_back():
    for formats in OUTPUT_FORMATS.values():
        assert {formats[key] for key in reverse(formats).values()} == set(formats.values())


def test_a_model_type_several_families_claim_is_told_apart_by_the_base_model():
    from onetrainer.util.config.onetrainer_json.import_model import family_of, supported_model_types

    claimed = [name for spec in families() for name in spec.onetrainer_model_types]
    assert all(name.isupper() for name in claimed)
    shared = {name: specs for name, specs in supported_model_types().items() if len(specs) > 1}
    assert set(shared) == {"FLUX_DEV_1", "STABLE_DIFFUSION_35"}
    for name, specs in shared.items():
        for spec in specs:
            for base in (f"tiny:{next(iter(spec.tiny))}", spec.hub_ids[0]):
                assert family_of(name, base) == (spec, None)
        first, why = family_of(name, "someone/merged-model")
        assert first is specs[0]
        assert why is not None
        assert all(f"model.type={spec.name}" in why for spec in specs[1:])
