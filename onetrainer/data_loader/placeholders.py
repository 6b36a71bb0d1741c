"""Refuse to train an embedding whose placeholder no caption mentions.

An embedding's vectors only receive a gradient where its placeholder is in the caption; without it
they move by weight decay alone, and hours later the result is an untrained file. The check reads
caption text (sidecar files, file names, concept files, fixed text, prefixes: the same lines training
draws from) and never decodes an image, so `train --check` can afford it.
"""

from __future__ import annotations

from dataclasses import dataclass

from onetrainer.data_loader.captions import CaptionSourceSettings, caption_lines
from onetrainer.data_loader.files import caption_path_for, list_images
from onetrainer.data_loader.scan import concept_labels
from onetrainer.util.config.data import ConceptType
from onetrainer.util.config.schema import TrainConfig
from onetrainer.util.enums import TrainingMethod
from onetrainer.util.errors import ConfigError, ConfigProblem


@dataclass(frozen=True)
class TrainedPlaceholder:
    key: str
    """Its key path in the config, e.g. `embedding.placeholder`."""
    text: str


def trained_placeholders(config: TrainConfig) -> list[TrainedPlaceholder]:
    """The placeholders whose vectors this run trains."""
    embedding = config.embedding
    found = []
    if config.method is TrainingMethod.EMBEDDING:
        found.append(TrainedPlaceholder("embedding.placeholder", embedding.placeholder))
    found += [
        TrainedPlaceholder(f"embedding.additional.{index}.placeholder", extra.placeholder)
        for index, extra in enumerate(embedding.additional)
        if extra.train
    ]
    return found


def _concept_captions(config: TrainConfig) -> dict[int, list[str]]:
    """Every caption line of each enabled standard concept that has images (prior and validation
    concepts train no placeholder, and an empty folder is reported by the dataset scan)."""
    captions: dict[int, list[str]] = {}
    for index, concept in enumerate(config.data.concepts):
        if not concept.enabled or concept.type is not ConceptType.STANDARD or not concept.path.is_dir():
            continue
        settings = CaptionSourceSettings.of(concept.caption)
        images = list_images(concept.path, recursive=concept.include_subdirectories)
        if images:
            captions[index] = [
                line for image in images for line in caption_lines(settings, image, caption_path_for(image))
            ]
    return captions


def placeholder_problems(config: TrainConfig) -> list[ConfigProblem]:
    """One problem per concept that would train nothing, and per trained placeholder in no caption."""
    placeholders = trained_placeholders(config)
    if not placeholders:
        return []
    captions = _concept_captions(config)
    if not captions:
        return []
    labels = concept_labels(config.data.concepts)
    names = " or ".join(repr(item.text) for item in placeholders)
    problems = []
    lacking = []
    if config.method is TrainingMethod.EMBEDDING:
        for index, lines in captions.items():
            if not any(item.text in line for item in placeholders for line in lines):
                lacking.append(index)
                problems.append(
                    ConfigProblem(
                        f"data.concepts.{index}",
                        f"no caption of concept '{labels[index]}' contains {names}: its images would train "
                        "nothing (method: embedding)",
                    )
                )
    if len(lacking) == len(captions):
        return problems
    for item in placeholders:
        if not any(item.text in line for lines in captions.values() for line in lines):
            where = ", ".join(f"'{labels[index]}' (data.concepts.{index})" for index in captions)
            message = f"in no caption of concept(s) {where}: it would not train"
            problems.append(ConfigProblem(item.key, message, item.text, has_value=True))
    return problems


def check_placeholders(config: TrainConfig) -> None:
    """Raise the exit-2 `ConfigError` when a trained placeholder would not train."""
    problems = placeholder_problems(config)
    if not problems:
        return
    example = trained_placeholders(config)[0].text
    raise ConfigError(
        problems,
        hint=f"Write the placeholder into the captions (e.g. 'a photo of {example}'), or put it before every "
        f"caption of a concept with its caption.prefix, e.g. `\"data.concepts.0.caption.prefix='{example}, '\"` "
        "(quoted, so the trailing space stays).",
    )
