"""Export the data settings and concepts of a run config as OneTrainer's (inline) concept list."""

from __future__ import annotations

from typing import Any

from onetrainer.util.config.onetrainer_json.defaults import concept_defaults
from onetrainer.util.config.onetrainer_json.findings import View
from onetrainer.util.config.onetrainer_json.import_data import COLOURS
from onetrainer.util.config.onetrainer_json.tables import CAPTION_SOURCES, CONCEPT_TYPES, reverse
from onetrainer.util.family import FamilySpec


def resolution_text(value: int | list[int]) -> str:
    return ",".join(str(item) for item in value) if isinstance(value, list) else str(value)


def export_data(ours: View, ot: dict[str, Any], concept_defaults_ours: dict[str, Any], spec: FamilySpec) -> None:
    data = ours.child("data")
    ot["resolution"] = resolution_text(data["resolution"])
    ot["aspect_ratio_bucketing"] = data["bucketing"]
    ot["latent_caching"] = data["cache"]
    workspace = ours["workspace"]
    ot["cache_dir"] = data["cache_dir"] or f"{workspace}/cache"
    ot["clear_cache_before_training"] = data["clear_cache"]
    ot["dataloader_threads"] = data["workers"]
    loss = ours.child("loss").child("masked")
    ot["masked_training"] = loss["enabled"]
    if loss["enabled"]:
        ot["unmasked_probability"] = loss["unmasked_probability"]
    else:
        loss.ignore("unmasked_probability", "masked training is off")
    ot["unmasked_weight"] = loss["unmasked_weight"]
    ot["normalize_masked_area_loss"] = loss["normalize_area"]
    concepts = [_concept(item) for item in data.items("concepts", concept_defaults_ours)]
    ot["concepts"] = concepts
    _text_encoder_dropout(ours.child("parts"), data, ot, spec)


def _text_encoder_dropout(parts: View, data: View, ot: dict[str, Any], spec: FamilySpec) -> None:
    """OneTrainer's dropout per text encoder zeroes that encoder's output, each in its own draw: ours is
    `parts.<encoder>.dropout`. Our caption dropout (the empty caption, encoded) has no counterpart there."""
    for index, concept in enumerate(data.data.get("concepts") or []):
        if concept["caption"].get("caption_dropout"):
            data.ledger.refuse(
                f"data.concepts.{index}.caption.caption_dropout",
                concept["caption"]["caption_dropout"],
                "OneTrainer has no caption dropout: it zeroes each text encoder's output in its own draw "
                "(ours: parts.<encoder>.dropout)",
            )
    for component in spec.text_encoders:
        ot[component.name]["dropout_probability"] = parts.child(component.name)["dropout"] or 0.0


def _concept(concept: View) -> dict[str, Any]:
    exported = concept_defaults()
    exported["path"] = concept["path"]
    exported["name"] = concept["name"] or ""
    exported["enabled"] = concept["enabled"]
    exported["type"] = reverse(CONCEPT_TYPES)[concept["type"]]
    exported["include_subdirectories"] = concept["include_subdirectories"]
    if concept["samples"] is not None:
        exported["balancing"] = float(concept["samples"])
        exported["balancing_strategy"] = "SAMPLES"
        concept.skip("repeats")
    else:
        exported["balancing"] = concept["repeats"]
    exported["loss_weight"] = concept["loss_weight"]
    exported["seed"] = concept["seed"]
    exported["image_variations"] = concept["image_variations"]
    exported["text_variations"] = concept["text_variations"]
    if concept["resolution"] is not None:
        exported["image"]["enable_resolution_override"] = True
        exported["image"]["resolution_override"] = resolution_text(concept["resolution"])
    _image(concept.child("image"), exported["image"])
    _caption(concept.child("caption"), exported["text"])
    return exported


def _image(image: View, target: dict[str, Any]) -> None:
    jitter = image["crop_jitter"]
    target["enable_crop_jitter"] = jitter > 0
    if jitter not in (0.0, 1.0):
        image.unsupported("crop_jitter", "OneTrainer's crop jitter is on (anywhere) or off")
    flip = image["flip"]
    target["enable_random_flip"] = 0 < flip < 1
    target["enable_fixed_flip"] = flip == 1.0
    if flip not in (0.0, 0.5, 1.0):
        image.unsupported("flip", "OneTrainer flips at random (0.5), always (1) or never")
    if image["rotation"]:
        target["enable_random_rotate"] = True
        target["random_rotate_max_angle"] = image["rotation"]
    for name, (_, per_strength) in COLOURS.items():
        if image[name]:
            target[f"enable_random_{name}"] = True
            target[f"random_{name}_max_strength"] = image[name] / per_strength
    target["enable_random_circular_mask_shrink"] = image.child("mask_shrink")["enabled"]
    target["enable_random_mask_rotate_crop"] = image.child("mask_rotate_crop")["enabled"]


def _caption(caption: View, target: dict[str, Any]) -> None:
    source = caption["source"]
    if source in reverse(CAPTION_SOURCES):
        target["prompt_source"] = reverse(CAPTION_SOURCES)[source]
    else:
        caption.unsupported("source", f"OneTrainer's caption sources: {', '.join(reverse(CAPTION_SOURCES))}")
    if caption["concept_file"] is not None:
        target["prompt_path"] = caption["concept_file"]
    target["tag_delimiter"] = caption["tag_delimiter"]
    target["keep_tags_count"] = caption["keep_tags"]
    target["enable_tag_shuffling"] = caption["shuffle_tags"]
    dropout = caption["tag_dropout"]
    keep, only = caption["tag_dropout_keep"], caption["tag_dropout_only"]
    target["tag_dropout_special_tags_regex"] = caption["tag_dropout_regex"]
    if dropout:
        target["tag_dropout_enable"] = True
        target["tag_dropout_mode"] = "RANDOM"
        target["tag_dropout_probability"] = dropout
    if keep and only:
        caption.unsupported("tag_dropout_only", "OneTrainer takes either a keep-list or a drop-list")
    if keep or only:
        target["tag_dropout_special_tags_mode"] = "WHITELIST" if keep else "BLACKLIST"
        target["tag_dropout_special_tags"] = caption["tag_delimiter"].join(keep or only)
    caption.skip("caption_dropout")
    capitalisation = caption["random_capitalization"]
    if capitalisation:
        target["caps_randomize_enable"] = True
        target["caps_randomize_probability"] = capitalisation
