"""The mapping tables agree with OneTrainer's schema on one side and our optimizers and families on the other."""

import inspect

import pytest

from onetrainer.util.config.onetrainer_json.defaults import concept_defaults, sample_defaults, train_defaults
from onetrainer.util.config.onetrainer_json.tables import (
    ENUM_FIELDS,
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


@pytest.mark.parametrize("ours", sorted(OPTIMIZER_ARGS))
def test_every_mapped_optimizer_argument_is_one_our_optimizer_takes(ours):
    from onetrainer.trainer.optimizers import _optimizer_class

    assert Optimizer(ours).value in OPTIMIZER_NAMES.values()
    if ours == "adamw8bit":
        pytest.importorskip("bitsandbytes")
    accepted = inspect.signature(_optimizer_class(Optimizer(ours)).__init__).parameters
    assert set(OPTIMIZER_ARGS[ours].values()) <= set(accepted)


def test_each_of_our_output_formats_exports_to_one_onetrainer_format_that_imports_back():
    for formats in OUTPUT_FORMATS.values():
        assert {formats[key] for key in reverse(formats).values()} == set(formats.values())


def test_no_onetrainer_model_type_is_claimed_by_two_families():
    claimed = [name for spec in families() for name in spec.onetrainer_model_types]
    assert len(claimed) == len(set(claimed))
    assert all(name.isupper() for name in claimed)
