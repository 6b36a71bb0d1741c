"""The part of validation that needs the model family: done once `model.type` is known.

The schema itself is family-neutral; here the family spec decides what a config may say. It fills
`parts` with the family's components (and their default `train`), validates `model.options` against
the family's own options schema, and refuses, with the key path and what would be valid: a part the
family does not have, a key a part's role does not take, a method the family does not support, and a
noise or loss setting of the other training objective. A key the family does not use is an error,
never silently ignored; a key left at its default is not "used".
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from onetrainer.util.config.loss import LossWeighting, TimestepDistribution
from onetrainer.util.config.parts import TEXT_ENCODER_KEYS, TRAINABLE_KEYS, PartConfig
from onetrainer.util.enums import PredictionType, TrainingMethod
from onetrainer.util.errors import ConfigProblem
from onetrainer.util.family import FamilySpec, Objective, Role, family_names, find_family
from onetrainer.util.suggest import did_you_mean

if TYPE_CHECKING:
    from onetrainer.util.config.schema import TrainConfig

OBJECTIVE_ONLY: dict[Objective, dict[str, Any]] = {
    Objective.DDPM: {
        "noise.zero_terminal_snr": True,
        "model.prediction_type": None,
    },
    Objective.FLOW_MATCHING: {
        "noise.shift": None,
        "noise.dynamic_shift": None,
        "noise.timesteps.mode_scale": None,
    },
}
"""Keys that only one objective reads: setting one for a family of the other objective is an error."""

DISTRIBUTIONS = {
    Objective.DDPM: (TimestepDistribution.UNIFORM, TimestepDistribution.LOGIT_NORMAL, TimestepDistribution.SIGMOID),
    Objective.FLOW_MATCHING: (
        TimestepDistribution.UNIFORM,
        TimestepDistribution.LOGIT_NORMAL,
        TimestepDistribution.MODE,
        TimestepDistribution.COSMAP,
    ),
}
WEIGHTINGS = {
    Objective.DDPM: (LossWeighting.NONE, LossWeighting.MIN_SNR_GAMMA, LossWeighting.DEBIASED),
    Objective.FLOW_MATCHING: (LossWeighting.NONE, LossWeighting.SIGMA_SQRT, LossWeighting.COSMAP),
}
OBJECTIVE_NAMES = {Objective.DDPM: "DDPM (discrete timesteps)", Objective.FLOW_MATCHING: "flow matching"}


def family_problems(config: TrainConfig) -> list[ConfigProblem]:
    """Every family-dependent problem of `config`; fills in `parts` and `model.options` when there is none."""
    spec = find_family(config.model.type)
    if spec is None:
        names = family_names()
        return [
            ConfigProblem(
                "model.type",
                f"unknown model type; {did_you_mean(config.model.type, names)}valid: {', '.join(names)}",
                config.model.type,
                has_value=True,
            )
        ]
    problems = [
        *_method_problems(config, spec),
        *_part_problems(config, spec),
        *_objective_problems(config, spec),
        *_option_problems(config, spec),
    ]
    if not problems:
        config.parts = resolved_parts(config, spec)
    return problems


def resolved_parts(config: TrainConfig, spec: FamilySpec) -> dict[str, PartConfig]:
    """Every component of the family, in its order, with `train` decided."""
    parts: dict[str, PartConfig] = {}
    for component in spec.components:
        given = config.parts.get(component.name) or PartConfig()
        train = given.train
        if train is None:
            train = component.trains_by_default and config.method is not TrainingMethod.EMBEDDING
        parts[component.name] = given.model_copy(update={"train": train if component.trainable else False})
    return parts


def _method_problems(config: TrainConfig, spec: FamilySpec) -> list[ConfigProblem]:
    if config.method.value in spec.methods:
        return []
    return [
        ConfigProblem(
            "method",
            f"{spec.title} models cannot be trained this way; valid: {', '.join(sorted(spec.methods))}",
            config.method.value,
            has_value=True,
        )
    ]


def _part_problems(config: TrainConfig, spec: FamilySpec) -> list[ConfigProblem]:
    problems: list[ConfigProblem] = []
    names = list(spec.component_names)
    for name, part in config.parts.items():
        if name not in names:
            problems.append(
                ConfigProblem(
                    f"parts.{name}",
                    f"{spec.title} models have no part {name!r}; {did_you_mean(name, names)}"
                    f"parts: {', '.join(names)}",
                )
            )
            continue
        role = spec.component(name).role
        allowed = set(PartConfig.model_fields) - set(TEXT_ENCODER_KEYS)
        if role is Role.TEXT_ENCODER:
            allowed |= set(TEXT_ENCODER_KEYS)
        if role is Role.VAE:
            allowed -= set(TRAINABLE_KEYS)
        for key in sorted(part.model_fields_set - allowed):
            what = "text encoders" if key in TEXT_ENCODER_KEYS else "parts that can train (not the VAE)"
            problems.append(ConfigProblem(f"parts.{name}.{key}", f"only {what} take this key"))
        if config.method is TrainingMethod.EMBEDDING and part.train:
            problems.append(
                ConfigProblem(
                    f"parts.{name}.train",
                    "method: embedding trains only the embedding; use method lora or full with "
                    "embedding.additional to train both",
                    part.train,
                    has_value=True,
                )
            )
    return problems


def _explicitly_set(section: Any, dotted: str) -> bool:
    """Whether the user wrote `dotted` (relative to `section`), not just left its default."""
    head, _, rest = dotted.partition(".")
    if head not in section.model_fields_set:
        return False
    return not rest or _explicitly_set(getattr(section, head), rest)


def _objective_problems(config: TrainConfig, spec: FamilySpec) -> list[ConfigProblem]:
    problems: list[ConfigProblem] = []
    objective = spec.objective
    name = OBJECTIVE_NAMES[objective]
    for other, keys in OBJECTIVE_ONLY.items():
        if other is objective:
            continue
        for key in keys:
            if _explicitly_set(config, key):
                problems.append(
                    ConfigProblem(key, f"{spec.title} models train with {name}; this key is for {OBJECTIVE_NAMES[other]}")
                )
    if objective is not Objective.DDPM and config.model.prediction_type is not PredictionType.AUTO:
        problems.append(ConfigProblem("model.prediction_type", f"{spec.title} models train with {name}"))
    distribution = config.noise.timesteps.distribution
    if distribution not in DISTRIBUTIONS[objective]:
        valid = ", ".join(d.value for d in DISTRIBUTIONS[objective])
        problems.append(
            ConfigProblem(
                "noise.timesteps.distribution",
                f"not a distribution of {name}; valid: {valid}",
                distribution.value,
                has_value=True,
            )
        )
    weighting = config.loss.weighting
    if weighting not in WEIGHTINGS[objective]:
        valid = ", ".join(w.value for w in WEIGHTINGS[objective])
        problems.append(
            ConfigProblem("loss.weighting", f"not a weighting of {name}; valid: {valid}", weighting.value, has_value=True)
        )
    return problems


def _option_problems(config: TrainConfig, spec: FamilySpec) -> list[ConfigProblem]:
    from pydantic import ValidationError

    from onetrainer.util.config.errors import problems_from_validation_error

    options = config.model.options
    if spec.options is None:
        return [ConfigProblem(f"model.options.{key}", f"{spec.title} models have no options") for key in options]
    try:
        resolved = spec.options.model_validate(options)
    except ValidationError as error:
        return problems_from_validation_error(error, prefix="model.options")
    config.model.options = resolved.model_dump(mode="json")
    return []
