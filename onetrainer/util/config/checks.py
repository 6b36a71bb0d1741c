"""Checks that span sections of a validated config, reported like field errors (with key paths).

A field validator sees one section; these need two, such as a preview prompt's size, which falls back
to the training resolution when it is not set, or the registry, such as whether the model type can
train in this version at all, or an optimizer's class, whose signature says which `optimizer_args` it
takes, or whether it takes a learning rate per part.
"""

from __future__ import annotations

from onetrainer.util.config.memory import memory_problems
from onetrainer.util.config.optimization import optimization_problems
from onetrainer.util.config.optimizer_args import optimizer_arg_problems
from onetrainer.util.config.output import SIZE_STEP
from onetrainer.util.config.schema import TrainConfig
from onetrainer.util.errors import ConfigProblem
from onetrainer.util.family import find_family
from onetrainer.util.registry import ModuleKind, supported, supporting

TRAINS = (ModuleKind.LOADER, ModuleKind.SETUP, ModuleKind.SAMPLER, ModuleKind.SAVER)
"""The modules `train` calls (previews need the sampler, outputs the saver)."""


def cross_section_problems(config: TrainConfig) -> list[ConfigProblem]:
    """Every problem that only shows when sections are read together; empty when there is none."""
    return [
        *_trainable_problems(config),
        *_preview_size_problems(config),
        *_prior_problems(config),
        *memory_problems(config),
        *optimization_problems(config),
        *optimizer_arg_problems(config.training),
    ]


def _prior_problems(config: TrainConfig) -> list[ConfigProblem]:
    """A prior-preservation concept's target is the model without its LoRA: other methods have none."""
    from onetrainer.util.config.data import ConceptType
    from onetrainer.util.enums import TrainingMethod

    if config.method is TrainingMethod.LORA:
        return []
    return [
        ConfigProblem(
            f"data.concepts.{index}.type",
            f"a prior concept trains towards the model without its LoRA, which method {config.method.value} has "
            "not; use method: lora, or type: standard",
            concept.type.value,
            has_value=True,
        )
        for index, concept in enumerate(config.data.concepts)
        if concept.enabled and concept.type is ConceptType.PRIOR
    ]


def _trainable_problems(config: TrainConfig) -> list[ConfigProblem]:
    """A registered family that lacks a module `train` calls (one still being added) is refused up front.

    Its spec validates the rest of the config, so `--check` alone would pass a run that cannot start.
    An unknown model type is the schema's problem, not this one.
    """
    spec = find_family(config.model.type)
    if spec is None:
        return []
    missing = [kind.noun for kind in TRAINS if spec.name not in supported(kind)]
    if not missing:
        return []
    return [
        ConfigProblem(
            "model.type",
            f"{spec.title} models cannot be trained in this version (it has no {', '.join(missing)} for them); "
            f"model types that train: {', '.join(supporting(TRAINS)) or 'none'}",
            config.model.type,
            has_value=True,
        )
    ]


def _preview_size_problems(config: TrainConfig) -> list[ConfigProblem]:
    """Preview sides must be multiples of what the family's denoiser accepts (the VAE's scale, times the
    patch size of a transformer); an unset side takes the training resolution."""
    resolution = config.data.resolution
    default = resolution[0] if isinstance(resolution, list) else resolution
    spec = find_family(config.model.type)
    step = spec.size_step if spec is not None else SIZE_STEP
    problems = []
    for index, prompt in enumerate(config.sampling.prompts):
        for side in ("width", "height"):
            value = getattr(prompt, side)
            if (value if value is not None else default) % step == 0:
                continue
            near = (value if value is not None else default) // step * step
            if value is None:
                message = (
                    f"not set, so the preview takes data.resolution ({default}), which is not a multiple of {step}; "
                    f"set {side} (e.g. {near})"
                )
                problems.append(ConfigProblem(f"sampling.prompts.{index}.{side}", message))
            else:
                problems.append(
                    ConfigProblem(
                        f"sampling.prompts.{index}.{side}",
                        f"must be a multiple of {step} for this model type: {near} or {near + step}?",
                        value,
                        has_value=True,
                    )
                )
    return problems
