"""Checks of the optimizer and learning-rate settings read together: what the chosen optimizer or schedule
would ignore without a word, or refuse only at the first step, after the model has loaded.

- `training.momentum` is SGD's; no other optimizer of ours has one. The schedule keys each belong to the
  schedules that read them (`SCHEDULE_KEYS`). Set away from its default beside another choice, such a key
  would change nothing, so it is refused; at its default it never is, so a config that writes every key
  (a resolved one, an export) passes.
- An optimizer that adapts one step size for all parameter groups (`ONE_LEARNING_RATE`) takes one learning
  rate, so a trained part or embedding with a rate of its own is refused.
"""

from __future__ import annotations

from onetrainer.util.config.optimizer_args import ONE_LEARNING_RATE
from onetrainer.util.config.schema import TrainConfig
from onetrainer.util.config.training import LrScheduler, Optimizer, TrainingConfig
from onetrainer.util.enums import TrainingMethod
from onetrainer.util.errors import ConfigProblem
from onetrainer.util.suggest import either

DECAYING = (LrScheduler.LINEAR, LrScheduler.COSINE, LrScheduler.COSINE_WITH_RESTARTS, LrScheduler.POLYNOMIAL)
SCHEDULE_KEYS: dict[str, tuple[LrScheduler, ...]] = {
    "lr_cycles": (LrScheduler.COSINE_WITH_RESTARTS,),
    "lr_power": (LrScheduler.POLYNOMIAL,),
    "lr_min_factor": DECAYING,
}
"""The `training` keys of the schedule's shape, each with the schedules that read it (`trainer.schedulers`)."""
MOMENTUM = (Optimizer.SGD,)
"""The optimizers `training.momentum` reaches (`trainer.optimizers`)."""


def optimization_problems(config: TrainConfig) -> list[ConfigProblem]:
    """Every optimizer or schedule setting the rest of the config leaves unused or cannot train with."""
    return [*_unused_problems(config.training), *_learning_rate_problems(config)]


def _unused_problems(training: TrainingConfig) -> list[ConfigProblem]:
    problems = []
    if training.momentum != _default("momentum") and training.optimizer not in MOMENTUM:
        message = (
            f"the {training.optimizer.value} optimizer has no momentum, so this would change nothing: leave it out, "
            f"or use {_names(MOMENTUM)} (an Adam-like optimizer's momentum is the first of training.betas)"
        )
        problems.append(ConfigProblem("training.momentum", message, training.momentum, has_value=True))
    for key, schedules in SCHEDULE_KEYS.items():
        value = getattr(training, key)
        if value != _default(key) and training.lr_scheduler not in schedules:
            message = (
                f"only lr_scheduler {_names(schedules)} reads it; with {training.lr_scheduler.value} it would change "
                "nothing: leave it out"
            )
            problems.append(ConfigProblem(f"training.{key}", message, value, has_value=True))
    return problems


def _learning_rate_problems(config: TrainConfig) -> list[ConfigProblem]:
    """Rates of their own, for the trained parts and embeddings, that an optimizer of one rate cannot take."""
    training = config.training
    if training.optimizer not in ONE_LEARNING_RATE:
        return []
    rates = {f"parts.{name}.learning_rate": part.learning_rate for name, part in config.parts.items() if part.train}
    if config.method is TrainingMethod.EMBEDDING or any(extra.train for extra in config.embedding.additional):
        rates["embedding.learning_rate"] = config.embedding.learning_rate
    message = (
        f"the {training.optimizer.value} optimizer adapts one step size for everything it trains, so it takes one "
        f"learning rate and stops at the first step on a second: leave this out to take training.learning_rate "
        f"({training.learning_rate})"
    )
    return [
        ConfigProblem(key, message, rate, has_value=True)
        for key, rate in rates.items()
        if rate is not None and rate != training.learning_rate
    ]


def _default(key: str) -> object:
    return TrainingConfig.model_fields[key].default


def _names(members: tuple[Optimizer, ...] | tuple[LrScheduler, ...]) -> str:
    return either([member.value for member in members])
