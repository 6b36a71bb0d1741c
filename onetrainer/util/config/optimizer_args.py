"""The optimizers' registry (where each class lives, what each can do), and `training.optimizer_args` checked
against the chosen optimizer's constructor, with the rest of the config.

The arguments go to the optimizer class as keywords, so the class's own signature says which names it
takes, and its defaults say what kind of value each wants: a number where the default is a number,
true or false where it is a bool, a list of as many numbers as a tuple default holds (betas). Reading
it needs the class, so it is imported here, but only when `optimizer_args` is set; an optimizer whose
optional package is not installed is not checked (the trainer refuses it, naming the install command).
A misspelt knob or a word where a number belongs is then refused by `--check` and before any weights
load, not after the cache has filled. So is an argument that a `training` key sets (`lr`, `betas`, ...), and
a switch with which the optimizer would compute a learning rate of its own.
"""

from __future__ import annotations

import importlib
import inspect
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from onetrainer.util.config.training import Optimizer, TrainingConfig
from onetrainer.util.errors import ConfigProblem
from onetrainer.util.quiet import quiet_import
from onetrainer.util.suggest import did_you_mean

INSTALL_HINT = 'Install the optional optimizers with `pip install "onetrainer[optim]"`.'
QUANT_HINT = 'Install the quantisation libraries with `pip install "onetrainer[quant]"`.'


@dataclass(frozen=True)
class OptimizerClass:
    """Where an optimizer's class lives; `package` (its pip name) when that is an optional install."""

    module: str
    attribute: str
    package: str | None = None
    hint: str = INSTALL_HINT


OPTIMIZER_CLASSES: dict[Optimizer, OptimizerClass] = {
    Optimizer.ADAMW: OptimizerClass("torch.optim", "AdamW"),
    Optimizer.SGD: OptimizerClass("torch.optim", "SGD"),
    Optimizer.ADAFACTOR: OptimizerClass("transformers.optimization", "Adafactor"),
    Optimizer.ADAMW_8BIT: OptimizerClass("bitsandbytes.optim", "AdamW8bit", "bitsandbytes"),
    Optimizer.ADAMW_8BIT_AO: OptimizerClass("torchao.optim", "AdamW8bit", "torchao", QUANT_HINT),
    Optimizer.PRODIGY: OptimizerClass("prodigyopt", "Prodigy", "prodigyopt"),
    Optimizer.SCHEDULE_FREE_ADAMW: OptimizerClass("schedulefree", "AdamWScheduleFree", "schedulefree"),
    Optimizer.LION: OptimizerClass("lion_pytorch", "Lion", "lion-pytorch"),
    Optimizer.CAME: OptimizerClass("came_pytorch", "CAME", "came-pytorch"),
}

SHARDABLE = (Optimizer.ADAMW, Optimizer.SGD, Optimizer.PRODIGY, Optimizer.SCHEDULE_FREE_ADAMW, Optimizer.LION)
"""Optimizers that step FSDP's sharded weights (`DTensor`s) as they step whole ones, checked on two ranks
(tests/trainer/test_sharded_optimizers.py). Adafactor and CAME mix plain tensors into their update and fail at
the first step ("aten.add_.Tensor got mixed torch.Tensor and DTensor"). bitsandbytes' 8-bit AdamW needs CUDA;
torchao's steps shards alike, but a sharded backup of its 8-bit states is untested."""
ONE_LEARNING_RATE = (Optimizer.PRODIGY,)
"""Optimizers that adapt one step size for all parameter groups and so take one learning rate: prodigyopt
stops at the first step when groups differ ("only supported for values of 0", and our rates are above 0)."""
FIRST_CLASS_ARGUMENTS = {
    "lr": "training.learning_rate",
    "weight_decay": "training.weight_decay",
    "betas": "training.betas",
    "eps": "training.eps",
    "momentum": "training.momentum",
    "warmup_steps": "training.warmup",
}
"""Constructor arguments a `training` key sets (`trainer.optimizers`), by that key. Given in `optimizer_args`
as well, one of the two was silently lost: `lr` never took effect (every parameter group carries its own
rate), the others overrode their key."""
PAIRED_EPSILON = (Optimizer.ADAFACTOR, Optimizer.CAME)
"""Optimizers whose `eps` is a pair of numbers, which `training.eps` (one number) does not set:
`optimizer_args.eps` does."""
OWN_LEARNING_RATE: dict[Optimizer, tuple[str, ...]] = {Optimizer.ADAFACTOR: ("relative_step", "warmup_init")}
"""Switches that make an optimizer compute its own learning rate: transformers' Adafactor refuses one given
beside it, and every parameter group carries one (`training.learning_rate`), so the run could not start."""

_NOT_ARGUMENTS = ("self", "params")
"""Constructor parameters that are not settings: the parameters to optimize come from the model setup."""
_VARIADIC = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)


def import_optimizer_class(optimizer: Optimizer) -> type:
    """The class `optimizer` names; `ImportError` when its (optional) package is not installed."""
    spec = OPTIMIZER_CLASSES[optimizer]
    with quiet_import():
        module = importlib.import_module(spec.module)
    cls: type = getattr(module, spec.attribute)
    return cls


def optimizer_arg_problems(config: TrainingConfig) -> list[ConfigProblem]:
    """Every `training.optimizer_args` entry the chosen optimizer would refuse; empty when there is none,
    when none is set (nothing is imported then), or when its optional package is not installed or fails to
    import."""
    if not config.optimizer_args:
        return []
    try:
        cls = import_optimizer_class(config.optimizer)
    except Exception:  # (an optional package missing, or broken: bitsandbytes without its CUDA libraries)
        if OPTIMIZER_CLASSES[config.optimizer].package is None:
            raise
        return []  # (the trainer refuses it when it builds the optimizer, naming the install)
    return argument_problems(config.optimizer, cls, config.optimizer_args)


def argument_problems(optimizer: Optimizer, cls: type, args: Mapping[str, object]) -> list[ConfigProblem]:
    """The problems of `args` as keyword arguments of `cls`: names it lacks, values of the wrong kind."""
    signature = inspect.signature(cls).parameters
    parameters = {name: p for name, p in signature.items() if name not in _NOT_ARGUMENTS and p.kind not in _VARIADIC}
    takes_any = any(parameter.kind is inspect.Parameter.VAR_KEYWORD for parameter in signature.values())
    problems = []
    for name, value in args.items():
        parameter = parameters.get(name)
        if parameter is None:
            if not takes_any:
                problems.append(_unknown(optimizer, name, value, list(parameters)))
            continue
        if name in FIRST_CLASS_ARGUMENTS and not (name == "eps" and optimizer in PAIRED_EPSILON):
            problems.append(_first_class(optimizer, name, value))
            continue
        wanted = _wanted_kind(parameter)
        if wanted is not None and not wanted.accepts(value):
            problems.append(_wrong_kind(optimizer, parameter, value, wanted))
        elif value is True and name in OWN_LEARNING_RATE.get(optimizer, ()):
            problems.append(_own_learning_rate(optimizer, name))
    return problems


def _unknown(optimizer: Optimizer, name: str, value: object, names: list[str]) -> ConfigProblem:
    message = f"the {optimizer.value} optimizer has no such argument; {did_you_mean(name, names)}"
    return ConfigProblem(
        f"training.optimizer_args.{name}", f"{message}its arguments: {', '.join(names)}", value, has_value=True
    )


def _first_class(optimizer: Optimizer, name: str, value: object) -> ConfigProblem:
    key = FIRST_CLASS_ARGUMENTS[name]
    where = " (per part: parts.<name>.learning_rate)" if name == "lr" else ""
    message = f"the {optimizer.value} optimizer takes this from {key}, not from here: set {key} instead{where}"
    return ConfigProblem(f"training.optimizer_args.{name}", message, value, has_value=True)


def _own_learning_rate(optimizer: Optimizer, name: str) -> ConfigProblem:
    message = (
        f"makes the {optimizer.value} optimizer compute its own learning rate, which it refuses beside the one "
        "every parameter group carries (training.learning_rate): set it to false, and the rate with "
        "training.learning_rate, lr_scheduler and warmup"
    )
    return ConfigProblem(f"training.optimizer_args.{name}", message, True, has_value=True)


def _wrong_kind(optimizer: Optimizer, parameter: inspect.Parameter, value: object, wanted: _Kind) -> ConfigProblem:
    message = f"the {optimizer.value} optimizer takes {wanted.phrase} here (its default: {_as_yaml(parameter.default)})"
    return ConfigProblem(f"training.optimizer_args.{parameter.name}", message, value, has_value=True)


def _as_yaml(value: object) -> str:
    """A default as a config would spell it (`false`, `null`, `[0.9, 0.999]`), not as Python writes it."""
    if isinstance(value, tuple | list):
        return f"[{', '.join(_as_yaml(item) for item in value)}]"
    if isinstance(value, bool):
        return "true" if value else "false"
    return "null" if value is None else repr(value)


@dataclass(frozen=True)
class _Kind:
    """What kind of value a parameter takes, as read from its default (and a `bool | None` annotation)."""

    phrase: str
    bool_: bool = False
    number: bool = False
    text: bool = False
    numbers: int = 0
    """A list of exactly this many numbers (a tuple default such as betas)."""
    none: bool = False

    def accepts(self, value: object) -> bool:
        if value is None:
            return self.none
        if isinstance(value, bool):
            return self.bool_
        if isinstance(value, int | float):
            return self.number
        if isinstance(value, str):
            return self.text
        if isinstance(value, list):
            return len(value) == self.numbers and all(_is_number(item) for item in value)
        return False


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _wanted_kind(parameter: inspect.Parameter) -> _Kind | None:
    """The kind of value `parameter` takes; None when its default and annotation do not say (no default,
    a default of None with another annotation, an object), so any value goes through."""
    default = parameter.default
    none = _allows_none(parameter.annotation)
    if isinstance(default, bool):
        return _Kind("true or false", bool_=True, none=none)
    if _is_number(default):
        return _Kind("a number", number=True, none=none)
    if isinstance(default, str):
        return _Kind("text", text=True, none=none)
    if isinstance(default, tuple | list) and default and all(_is_number(item) for item in default):
        return _Kind(f"a list of {len(default)} numbers", numbers=len(default), none=none)
    if default is None and _is_optional_bool(parameter.annotation):
        return _Kind("true, false or null", bool_=True, none=True)
    return None


def _allows_none(annotation: Any) -> bool:
    """Whether a parameter's annotation (a type, or a string under postponed annotations) includes None."""
    if isinstance(annotation, str):
        return "None" in annotation or "Optional" in annotation
    return type(None) in typing.get_args(annotation)


def _is_optional_bool(annotation: Any) -> bool:
    """`bool | None` / `Optional[bool]`, the annotation of torch's `foreach` and `fused`."""
    if isinstance(annotation, str):
        return annotation.replace(" ", "") in ("bool|None", "Optional[bool]", "typing.Optional[bool]", "None|bool")
    return set(typing.get_args(annotation)) == {bool, type(None)}
