"""The part of validation that needs the model family: done once `model.type` is known.

The schema itself is family-neutral; here the family spec decides what a config may say. It fills
`parts` with the family's components (and their default `train`), validates `model.options` against
the family's own options schema, and refuses, with the key path and what would be valid: a part the
family does not have, a key a part's role does not take, a method the family does not support, and a
noise or loss setting of the other training objective. A key the family does not use is an error,
never silently ignored; a key at its default value is not "used", whether left out or written out (as
`dump_config` writes every key, so that a dumped config loads back).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from onetrainer.util.config.loss import LossWeighting, TimestepDistribution
from onetrainer.util.config.parts import DENOISER_KEYS, TEXT_ENCODER_KEYS, TRAINABLE_KEYS, PartConfig
from onetrainer.util.enums import PREVIEW_SCHEDULERS, SCHEDULERS_BY_OBJECTIVE, PredictionType, TrainingMethod
from onetrainer.util.errors import ConfigProblem
from onetrainer.util.family import FamilySpec, Objective, Role, default_family, family_names, find_family
from onetrainer.util.suggest import did_you_mean

if TYPE_CHECKING:
    from onetrainer.util.config.schema import TrainConfig

OBJECTIVE_ONLY: dict[Objective, tuple[str, ...]] = {
    Objective.DDPM: ("noise.zero_terminal_snr", "model.prediction_type"),
    Objective.FLOW_MATCHING: ("noise.shift", "noise.dynamic_shift", "noise.timesteps.mode_scale"),
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
_ROLE_KEYS = {
    **dict.fromkeys(TEXT_ENCODER_KEYS, "text encoders take"),
    **dict.fromkeys(DENOISER_KEYS, "the denoiser takes"),
}
"""Who takes a role-specific key, for the message refusing it elsewhere."""
OBJECTIVE_NAMES = {Objective.DDPM: "DDPM (discrete timesteps)", Objective.FLOW_MATCHING: "flow matching"}


def fill_family_defaults(data: dict[str, Any]) -> dict[str, Any]:
    """Raw config data with the family's defaults under it, every part of the family present and each
    trainable part's `train` decided.

    Runs before validation, on the merged YAML mapping: the family's `config_defaults` fill in what the
    mapping does not say; a part the user named keeps what they wrote; a part they did not name trains if
    the family trains it by default (the denoiser, under lora and full). An unknown model type is left
    alone for `family_problems` to report.
    """
    model = data.get("model")
    name = model.get("type") if isinstance(model, dict) else None
    if name is None:
        name = default_family().name
    parts = data.get("parts", {})
    spec = find_family(name) if isinstance(name, str) else None
    if spec is None or not isinstance(parts, dict):
        return data
    if spec.config_defaults:
        from onetrainer.util.config.loader import deep_merge

        data = deep_merge(dict(spec.config_defaults), data)
    method = data.get("method", TrainingMethod.LORA.value)
    trains = getattr(method, "value", method) != TrainingMethod.EMBEDDING.value
    filled = dict(parts)
    for component in spec.components:
        part = filled.get(component.name)
        if part is None:
            part = {}
        if isinstance(part, dict) and component.trainable and "train" not in part:
            part = {**part, "train": component.trains_by_default and trains}
        filled[component.name] = part
    ordered = {c.name: filled.pop(c.name) for c in spec.components}
    return {**data, "parts": {**ordered, **filled}, **_preview_schedulers(data, spec)}


def _preview_schedulers(data: dict[str, Any], spec: FamilySpec) -> dict[str, Any]:
    """`sampling` with each prompt that names no scheduler given the objective's default (a DDPM solver's
    name means nothing to a flow-matching model)."""
    sampling = data.get("sampling")
    if not isinstance(sampling, dict) or not isinstance(sampling.get("prompts"), list):
        return {}
    prompts = sampling["prompts"]
    default = PREVIEW_SCHEDULERS[spec.objective.value]
    filled = [
        {**prompt, "scheduler": default} if isinstance(prompt, dict) and "scheduler" not in prompt else prompt
        for prompt in prompts
    ]
    return {"sampling": {**sampling, "prompts": filled}}


def family_problems(config: TrainConfig) -> list[ConfigProblem]:
    """Every family-dependent problem of a validated `config`; empty when there is none."""
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
    return [
        *_method_problems(config, spec),
        *_part_problems(config, spec),
        *_objective_problems(config, spec),
        *_option_problems(config, spec),
        *_single_file_problems(config, spec),
    ]


def family_warnings(config: TrainConfig) -> list[str]:
    """What a valid `config` asks for that loses something outside onetrainer, said before anything loads:
    a LoRA saved as peft (`saving.format: peft`) that trains a part other tools read only as kohya. Not
    refused, as onetrainer's own `sample` and resume read it."""
    from onetrainer.util.config.output import SaveFormat

    spec = find_family(config.model.type)
    if spec is None or config.method is not TrainingMethod.LORA or config.saving.format is not SaveFormat.PEFT:
        return []
    trained = [name for name, part in config.parts.items() if part.train]
    return spec.peft_warnings(trained, f"saving.format: {config.saving.format.value}")


def _single_file_problems(config: TrainConfig, spec: FamilySpec) -> list[ConfigProblem]:
    """A full fine-tune saved as the family's single file must train only parts that file holds (some
    families' original file holds the denoiser alone); the rest would be lost without a word."""
    from onetrainer.util.config.output import SaveFormat

    saving = config.saving
    single = saving.format is SaveFormat.SINGLE_FILE or (
        saving.format is SaveFormat.AUTO and str(saving.output).lower().endswith(".safetensors")
    )
    if config.method is not TrainingMethod.FULL or not single or spec.single_file is None:
        return []
    held = {component for _, component in spec.single_file.component_prefixes}
    return [
        ConfigProblem(
            f"parts.{name}.train",
            f"saving.output is a {spec.title} single file, which holds only the "
            f"{', '.join(spec.component(c).title for c in sorted(held))}; the trained {spec.component(name).title} "
            "would not be saved: save a diffusers folder (an output path without .safetensors)",
            True,
            has_value=True,
        )
        for name, part in config.parts.items()
        if part.train and name not in held and name in spec.component_names
    ]


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
                    f"{spec.title} models have no part {name!r}; {did_you_mean(name, names)}parts: {', '.join(names)}",
                )
            )
            continue
        component = spec.component(name)
        role = component.role
        allowed = set(PartConfig.model_fields) - set(TEXT_ENCODER_KEYS) - set(DENOISER_KEYS)
        if role is Role.TEXT_ENCODER:
            allowed |= set(TEXT_ENCODER_KEYS)
        if role is Role.DENOISER:
            allowed |= set(DENOISER_KEYS)
        if role is Role.VAE:
            allowed -= set(TRAINABLE_KEYS)
        for key in sorted(_used_keys(part) - allowed):
            what = _ROLE_KEYS.get(key, "parts that can train (not the VAE) take")
            problems.append(ConfigProblem(f"parts.{name}.{key}", f"only {what} this key"))
        if role is Role.TEXT_ENCODER and part.layer_skip and not component.takes_layer_skip:
            problems.append(
                ConfigProblem(
                    f"parts.{name}.layer_skip",
                    f"{spec.title} models read only the {component.title}'s last layer or pooled output, so no "
                    "layer can be skipped: leave it at 0",
                    part.layer_skip,
                    has_value=True,
                )
            )
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


def _used(section: Any, dotted: str) -> bool:
    """Whether `dotted` (relative to `section`) was written with a value other than its default."""
    head, _, rest = dotted.partition(".")
    if head not in section.model_fields_set:
        return False
    value = getattr(section, head)
    if rest:
        return _used(value, rest)
    return bool(value != type(section).model_fields[head].get_default(call_default_factory=True))


def _used_keys(section: Any) -> set[str]:
    return {key for key in section.model_fields_set if _used(section, key)}


def _objective_problems(config: TrainConfig, spec: FamilySpec) -> list[ConfigProblem]:
    problems: list[ConfigProblem] = []
    objective = spec.objective
    name = OBJECTIVE_NAMES[objective]
    for other, keys in OBJECTIVE_ONLY.items():
        if other is objective:
            continue
        for key in keys:
            if _used(config, key):
                problems.append(
                    ConfigProblem(
                        key, f"{spec.title} models train with {name}; this key is for {OBJECTIVE_NAMES[other]}"
                    )
                )
    if objective is Objective.DDPM and config.noise.zero_terminal_snr:
        problems.extend(zero_terminal_snr_problems(config.model.prediction_type.value))
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
    valid_schedulers = SCHEDULERS_BY_OBJECTIVE[objective.value]
    for index, prompt in enumerate(config.sampling.prompts):
        if prompt.scheduler not in valid_schedulers:
            problems.append(
                ConfigProblem(
                    f"sampling.prompts.{index}.scheduler",
                    f"not a scheduler of {name}; valid: {', '.join(valid_schedulers)}",
                    prompt.scheduler,
                    has_value=True,
                )
            )
    weighting = config.loss.weighting
    if weighting not in WEIGHTINGS[objective]:
        valid = ", ".join(w.value for w in WEIGHTINGS[objective])
        problems.append(
            ConfigProblem(
                "loss.weighting", f"not a weighting of {name}; valid: {valid}", weighting.value, has_value=True
            )
        )
    return problems


def zero_terminal_snr_problems(prediction_type: str | None) -> list[ConfigProblem]:
    """Zero-terminal SNR makes the last timestep pure noise: there the noise (epsilon) target is the input
    itself and says nothing of the image, so it trains with v-prediction (as the paper and OneTrainer do).
    `prediction_type` is the config's, or the model's own once `auto` is resolved at load."""
    if prediction_type != PredictionType.EPSILON.value:
        return []
    return [
        ConfigProblem(
            "model.prediction_type",
            "zero-terminal SNR (noise.zero_terminal_snr: true) trains with v_prediction: at its last, pure-noise "
            "timestep an epsilon target is the input itself; set model.prediction_type: v_prediction (or sample), "
            "or turn zero_terminal_snr off",
            prediction_type,
            has_value=True,
        )
    ]


def _option_problems(config: TrainConfig, spec: FamilySpec) -> list[ConfigProblem]:
    from pydantic import ValidationError

    options = config.model.options
    if spec.options is None:
        return [ConfigProblem(f"model.options.{key}", f"{spec.title} models have no options") for key in options]
    try:
        spec.options.model_validate(options)
    except ValidationError as error:
        return [
            ConfigProblem(
                ".".join(["model.options", *(str(part) for part in item["loc"])]),
                str(item["msg"]).removeprefix("Value error, "),
                item.get("input"),
                has_value=item["type"] != "missing",
            )
            for item in error.errors()
        ]
    return [
        ConfigProblem(
            f"parts.{name}.train",
            f"model.options.{option} leaves the {spec.component(name).title} out, so it cannot train; "
            f"set parts.{name}.train: false, or load it (model.options.{option}: true)",
            True,
            has_value=True,
        )
        for name, option in spec.left_out(options).items()
        if name in config.parts and config.parts[name].train
    ]
