"""Import OneTrainer's data settings and concepts (folders, balancing, image and caption augmentation)."""

from __future__ import annotations

import math
import re
from typing import Any

from onetrainer.util.config.onetrainer_json.defaults import concept_defaults
from onetrainer.util.config.onetrainer_json.findings import View
from onetrainer.util.config.onetrainer_json.tables import CAPTION_SOURCES, CONCEPT_TYPES
from onetrainer.util.config.onetrainer_json.target import Target
from onetrainer.util.family import FamilySpec

FALLBACK_RESOLUTION = 512
"""OneTrainer's default resolution, used when its value cannot be read."""
COLOURS = {"brightness": (1.0, 1.0), "contrast": (1.0, 1.0), "saturation": (1.0, 1.0), "hue": (1.0, 0.5)}
"""OneTrainer's colour jitters: (its largest strength, our strength per unit of its). Its hue strength s shifts
by up to s/2 turns either way (mgds' `RandomHue` draws from ±s/2), ours by up to `hue` turns."""
_SIZE = re.compile(r"^\s*(\d+)\s*[xX]\s*(\d+)\s*$")


def parse_resolution(view: View, key: str) -> int | list[int] | None:
    """OneTrainer's `"512"`, `"512,768"` (several) or `"768x512"` (a fixed size) as our resolution."""
    text = str(view[key]).strip()
    size = _SIZE.match(text)
    if size:
        width, height = int(size.group(1)), int(size.group(2))
        side = round(math.sqrt(width * height) / 8) * 8
        view.unsupported(key, f"a fixed width x height; onetrainer trains aspect buckets of {side}x{side} pixels")
        return side
    try:
        values = [int(item) for item in text.split(",") if item.strip()]
    except ValueError:
        view.unsupported(key, "expected a side length, a comma list of them, or WxH")
        return None
    if not values:
        return None
    return values[0] if len(values) == 1 else values


def map_data(config: View, out: Target, spec: FamilySpec) -> None:
    out.set("data.resolution", parse_resolution(config, "resolution") or FALLBACK_RESOLUTION)
    out.set("data.bucketing", config["aspect_ratio_bucketing"])
    theirs = spec.onetrainer_bucket_step
    if config["aspect_ratio_bucketing"] and theirs not in (None, spec.bucket_step):
        config.note(
            "aspect_ratio_bucketing",
            f"OneTrainer sizes {spec.title} buckets in steps of {theirs} px, ours in {spec.bucket_step} px: images "
            "whose sides fall between are cropped by a few pixels less",
        )
    out.set("data.cache", config["latent_caching"])
    out.set("data.cache_dir", config["cache_dir"])
    out.set("data.clear_cache", config["clear_cache_before_training"])
    out.set("data.workers", config["dataloader_threads"])
    out.set("loss.masked.enabled", config["masked_training"])
    if config["masked_training"]:
        out.set("loss.masked.unmasked_probability", config["unmasked_probability"])
    else:
        config.ignore("unmasked_probability", "masked_training is off")
    out.set("loss.masked.unmasked_weight", config["unmasked_weight"])
    if config["masked_training"] and config["unmasked_weight"]:
        config.note(
            "unmasked_weight",
            "a mask's soft edges weigh w + (1 - w) * mask here, max(mask, w) in OneTrainer (the same for a 0/1 mask)",
        )
    out.set("loss.masked.normalize_area", config["normalize_masked_area_loss"])


def map_concepts(concepts: list[View]) -> list[dict[str, Any]]:
    return [_concept(concept) for concept in concepts]


def concept_views(config: View, concepts: list[dict[str, Any] | None], prefix: str) -> list[View]:
    """A view of each concept, under its index in the file; an entry the overlay refused (None) is left out."""
    defaults = concept_defaults()
    return [
        View(item, defaults, config.ledger, f"{prefix}{index}.")
        for index, item in enumerate(concepts)
        if item is not None
    ]


def _concept(concept: View) -> dict[str, Any]:
    mapped: dict[str, Any] = {"path": concept["path"]}
    if concept["name"]:
        mapped["name"] = concept["name"]
    mapped["enabled"] = concept["enabled"]
    mapped["type"] = CONCEPT_TYPES[concept["type"]]
    mapped["include_subdirectories"] = concept["include_subdirectories"]
    if concept["balancing_strategy"] == "SAMPLES":
        mapped["samples"] = max(1, int(concept["balancing"]))
    else:
        mapped["repeats"] = concept["balancing"]
    mapped["loss_weight"] = concept["loss_weight"]
    mapped["seed"] = concept["seed"] % 2**31
    mapped["image_variations"] = concept["image_variations"]
    mapped["text_variations"] = concept["text_variations"]
    image = concept.child("image")
    if image["enable_resolution_override"]:
        mapped["resolution"] = parse_resolution(image, "resolution_override")
    else:
        image.ignore("resolution_override", "enable_resolution_override is off")
    mapped["caption"] = _caption(concept.child("text"))
    mapped["image"] = _image(image)
    concept.skip("concept_stats")
    return mapped


def _image(image: View) -> dict[str, Any]:
    mapped: dict[str, Any] = {"crop_jitter": 1.0 if image["enable_crop_jitter"] else 0.0}
    if image["enable_fixed_flip"]:
        mapped["flip"] = 1.0
        image.refuse("enable_random_flip", "the flip is fixed (always) already")
    else:
        mapped["flip"] = 0.5 if image["enable_random_flip"] else 0.0
    image.refuse("enable_fixed_rotate", "rotations are random, up to the angle")
    if image["enable_random_rotate"]:
        mapped["rotation"] = _bounded(image, "random_rotate_max_angle", 180.0)
    elif image["enable_fixed_rotate"]:
        image.skip("random_rotate_max_angle")
    else:
        image.ignore("random_rotate_max_angle", "enable_random_rotate is off")
    for name, (largest, per_strength) in COLOURS.items():
        image.refuse(f"enable_fixed_{name}", f"{name} changes are random, up to the strength")
        if image[f"enable_random_{name}"]:
            mapped[name] = _bounded(image, f"random_{name}_max_strength", largest) * per_strength
        elif image[f"enable_fixed_{name}"]:
            image.skip(f"random_{name}_max_strength")
        else:
            image.ignore(f"random_{name}_max_strength", f"enable_random_{name} is off")
    mapped["mask_shrink"] = {"enabled": image["enable_random_circular_mask_shrink"]}
    mapped["mask_rotate_crop"] = {"enabled": image["enable_random_mask_rotate_crop"]}
    return mapped


def _bounded(view: View, key: str, largest: float) -> float:
    value = float(view[key])
    if not 0 <= value <= largest:
        view.unsupported(key, f"must be between 0 and {largest:g}")
        return min(max(value, 0.0), largest)
    return value


def _caption(text: View) -> dict[str, Any]:
    source = text["prompt_source"]
    mapped: dict[str, Any] = {"source": CAPTION_SOURCES.get(source, "sidecar")}
    if source not in CAPTION_SOURCES:
        text.unsupported("prompt_source", f"caption sources: {', '.join(CAPTION_SOURCES)}")
    if source == "concept":
        mapped["concept_file"] = text["prompt_path"]
    else:
        text.ignore("prompt_path", "prompt_source is not concept")
    mapped["tag_delimiter"] = text["tag_delimiter"] or ","
    mapped["keep_tags"] = text["keep_tags_count"]
    mapped["shuffle_tags"] = text["enable_tag_shuffling"]
    mapped.update(_tag_dropout(text))
    mapped["random_capitalization"] = _capitalisation(text)
    return mapped


def _tag_dropout(text: View) -> dict[str, Any]:
    if not text["tag_dropout_enable"]:
        for key in ("tag_dropout_probability", "tag_dropout_mode", "tag_dropout_special_tags_mode"):
            text.ignore(key, "tag_dropout_enable is off")
        text.ignore("tag_dropout_special_tags", "tag_dropout_enable is off")
        text.ignore("tag_dropout_special_tags_regex", "tag_dropout_enable is off")
        return {"tag_dropout": 0.0}
    if text["tag_dropout_mode"] != "RANDOM":
        text.unsupported("tag_dropout_mode", "tag dropout drops each tag on its own (RANDOM)")
    mapped: dict[str, Any] = {"tag_dropout": text["tag_dropout_probability"]}
    mode = text["tag_dropout_special_tags_mode"]
    tags_text = text["tag_dropout_special_tags"].strip()
    mapped["tag_dropout_regex"] = text["tag_dropout_special_tags_regex"]
    if mode == "NONE":
        text.ignore("tag_dropout_special_tags", "tag_dropout_special_tags_mode is NONE")
        return mapped
    if tags_text.lower().endswith((".txt", ".csv")):
        text.unsupported("tag_dropout_special_tags", "list the tags in the config instead of a file")
        return mapped
    tags = [tag.strip() for tag in tags_text.split(text["tag_delimiter"] or ",") if tag.strip()]
    if mode == "BLACKLIST":
        mapped["tag_dropout_only"] = tags
    elif mode == "WHITELIST":
        mapped["tag_dropout_keep"] = tags
    else:
        text.unsupported("tag_dropout_special_tags_mode", "expected NONE, BLACKLIST or WHITELIST")
    return mapped


def _capitalisation(text: View) -> float:
    if not text["caps_randomize_enable"]:
        for key in ("caps_randomize_probability", "caps_randomize_mode", "caps_randomize_lowercase"):
            text.ignore(key, "caps_randomize_enable is off")
        return 0.0
    if text.is_default("caps_randomize_mode"):
        text.note("caps_randomize_mode", "its `random` letters style is `lower` case here")
    text.refuse("caps_randomize_mode", "captions are rewritten as lower, UPPER, Title or First case")
    text.refuse("caps_randomize_lowercase", "captions are not lower-cased first")
    return float(text["caps_randomize_probability"])
