"""Optimizer and schedule settings that the chosen optimizer or schedule would ignore, or refuse only at its first
step, are refused with the config, each naming its key and the way out."""

from __future__ import annotations

from typing import Any

import pytest

from onetrainer.trainer.schedulers import lr_factor
from onetrainer.util.config.loader import validate
from onetrainer.util.config.optimization import SCHEDULE_KEYS
from onetrainer.util.config.schema import TrainConfig
from onetrainer.util.config.training import LrScheduler
from onetrainer.util.errors import ConfigError

BASE = {"model": {"type": "sd15", "base": "tiny:sd15"}}


def _problems(**settings: Any) -> dict[str, str]:
    with pytest.raises(ConfigError) as refused:
        validate({**BASE, **settings}, check_paths=False)
    return {problem.path: problem.message for problem in refused.value.problems}


def _valid(**settings: Any) -> TrainConfig:
    return validate({**BASE, **settings}, check_paths=False)


def test_momentum_is_refused_for_an_optimizer_without_one() -> None:
    assert "adamw optimizer has no momentum" in _problems(training={"momentum": 0.9})["training.momentum"]
    assert _valid(training={"optimizer": "sgd", "momentum": 0.9}).training.momentum == 0.9
    assert _valid(training={"momentum": 0.0}).training.momentum == 0.0, "the default changes nothing anywhere"


@pytest.mark.parametrize(
    ("key", "value", "used_by"),
    [("lr_cycles", 3, "cosine_with_restarts"), ("lr_power", 2.0, "polynomial"), ("lr_min_factor", 0.1, "cosine")],
)
def test_a_schedule_key_is_refused_with_a_schedule_that_does_not_read_it(key: str, value: float, used_by: str) -> None:
    problems = _problems(training={"lr_scheduler": "linear" if key != "lr_min_factor" else "constant", key: value})
    assert list(problems) == [f"training.{key}"]
    assert "would change nothing" in problems[f"training.{key}"]
    assert getattr(_valid(training={"lr_scheduler": used_by, key: value}).training, key) == value


def test_the_schedule_keys_are_those_the_schedules_read() -> None:
    """`SCHEDULE_KEYS` names, per key, exactly the schedules whose factors it changes."""
    defaults = {"cycles": 1, "power": 1.0, "min_factor": 0.0}
    changed = {"cycles": 3, "power": 2.0, "min_factor": 0.5}
    for key, schedules in SCHEDULE_KEYS.items():
        argument = key.removeprefix("lr_")
        for kind in LrScheduler:
            factors = [
                [lr_factor(kind, step, 20, 2, **{**defaults, argument: value}) for step in range(20)]
                for value in (defaults[argument], changed[argument])
            ]
            assert (factors[0] != factors[1]) == (kind in schedules), (key, kind)


def test_prodigy_takes_one_learning_rate_for_every_trained_part() -> None:
    """prodigyopt refuses parameter groups with different rates at the first step, after the model has loaded."""
    prodigy = {"optimizer": "prodigy", "learning_rate": 1.0}
    parts = {"unet": {"learning_rate": 0.5}, "text_encoder": {"train": True, "learning_rate": 0.3}}
    problems = _problems(training=prodigy, parts=parts)
    assert set(problems) == {"parts.unet.learning_rate", "parts.text_encoder.learning_rate"}
    assert "training.learning_rate (1.0)" in problems["parts.unet.learning_rate"]
    frozen = {"unet": {"learning_rate": 1.0}, "text_encoder": {"train": False, "learning_rate": 0.3}}
    assert _valid(training=prodigy, parts=frozen).parts["text_encoder"].learning_rate == 0.3, "it does not train"
    assert _valid(training={"optimizer": "adamw"}, parts=parts).parts["unet"].learning_rate == 0.5


def test_prodigy_refuses_an_embedding_rate_of_its_own_where_an_embedding_trains() -> None:
    prodigy = {"optimizer": "prodigy", "learning_rate": 1.0}
    embedding = {"learning_rate": 0.5}
    assert "embedding.learning_rate" in _problems(method="embedding", training=prodigy, embedding=embedding)
    additional = {**embedding, "additional": [{"placeholder": "<x>"}]}
    assert "embedding.learning_rate" in _problems(training=prodigy, embedding=additional)
    assert _valid(training=prodigy, embedding=embedding).embedding.learning_rate == 0.5, "no embedding trains"
