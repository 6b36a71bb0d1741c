"""Import OneTrainer's adapter settings: LoRA (type, rank, alpha, dropout, layer filter) and embeddings.

OneTrainer's layer filter applies to the denoiser only; its text-encoder LoRA always covers every
layer. So the filter becomes the denoiser's own `parts.<denoiser>.lora_targets` / `lora_regex`, and
`lora.targets: full` covers the text encoders, as in OneTrainer. Its training reads only `layer_filter`
(the UI writes a named preset's patterns there), so that is what is imported: as the preset of ours that
adapts the same layers where one does, else as a regex.
"""

from __future__ import annotations

import re

from onetrainer.util.config.adapters import LoraTargets
from onetrainer.util.config.onetrainer_json.defaults import embedding_defaults
from onetrainer.util.config.onetrainer_json.findings import SILENT_KEYS, View
from onetrainer.util.config.onetrainer_json.import_model import stop_after
from onetrainer.util.config.onetrainer_json.tables import OUTPUT_FORMATS, PEFT_TYPES
from onetrainer.util.config.onetrainer_json.target import Target
from onetrainer.util.config.output import dora_on_output
from onetrainer.util.family import FamilySpec

LORA_ONLY = ("peft_type", "lora_rank", "lora_alpha", "dropout_probability", "lora_decompose", "lora_model_name")
DORA_KEYS = ("lora_decompose_norm_epsilon", "lora_decompose_output_axis")
LOKR_KEYS = (
    "lokr_dim",
    "lokr_decompose_factor",
    "lokr_decompose_both",
    "lokr_use_tucker",
    "lokr_weight_decompose",
    "lokr_full_matrix",
    "lokr_dora_on_output",
    "lokr_vec_trick",
)
OFT_KEYS = ("oft_block_size", "oft_block_share", "oft_scaled")
INPUT_DROPOUT = ("lora", "dora")
"""Our adapter types whose dropout (peft's `lora_dropout`) drops the adapted layer's input."""


def map_lora(config: View, out: Target, spec: FamilySpec, method: str) -> None:
    if method != "lora":
        for key in (*LORA_ONLY, *DORA_KEYS, *LOKR_KEYS, *OFT_KEYS):
            config.ignore(key, "only used by LoRA training (OneTrainer ignores it too)")
        if method == "full":
            _full_fine_tune_filter(config)
        else:
            config.skip("layer_filter", "layer_filter_preset", "layer_filter_regex")
        return
    peft = config["peft_type"]
    kind = PEFT_TYPES.get(peft)
    if kind is None:
        config.unsupported("peft_type", f"adapter types: {', '.join(PEFT_TYPES)} (and DoRA)")
        kind = "lora"
    decompose = config["lora_decompose"]
    if kind == "lora" and decompose:
        kind = "dora"
        config.refuse("lora_decompose_norm_epsilon", "DoRA's norm has no epsilon switch")
        _check_dora_axis(config)
    else:
        config.refuse("lora_decompose", "DoRA is a LoRA option")
        config.ignore("lora_decompose_norm_epsilon", "only used by DoRA")
        config.ignore("lora_decompose_output_axis", "only used by DoRA")
    out.set("lora.type", kind)
    if kind == "lokr":
        out.set("lora.rank", config["lokr_dim"])
        config.skip("lora_rank")
        for key in LOKR_KEYS[1:]:
            config.refuse(key, "LoKr is peft's, with its own factorisation")
    else:
        out.set("lora.rank", config["lora_rank"])
        for key in LOKR_KEYS:
            config.ignore(key, "only used by LoKr")
    for key in OFT_KEYS:
        config.ignore(key, "only used by OFT")
    out.set("lora.alpha", config["lora_alpha"])
    out.set("lora.dropout", config["dropout_probability"])
    if kind in INPUT_DROPOUT and config["dropout_probability"]:
        config.note(
            "dropout_probability",
            "OneTrainer drops LoRA activations at the rank (after lora_down); peft drops the layer's input "
            "(before lora_A): the same rate, applied at another place",
        )
    if config["lora_model_name"]:
        out.set("lora.init_from", config["lora_model_name"])
    _layer_filter(config, out, spec)


def _full_fine_tune_filter(config: View) -> None:
    filter_text = config["layer_filter"].strip()
    preset = config["layer_filter_preset"]
    config.skip("layer_filter_regex")
    if filter_text or preset not in ("full", "custom"):
        config.unsupported(
            "layer_filter" if filter_text else "layer_filter_preset", "full fine-tuning trains whole parts"
        )


def _layer_filter(config: View, out: Target, spec: FamilySpec) -> None:
    """The denoiser's LoRA layers: OneTrainer's `layer_filter`, what it trains; where that is empty, the
    named preset's, as OneTrainer's UI fills it in (its CLI would train every layer, so a note says so)."""
    preset = config["layer_filter_preset"]
    text = config["layer_filter"].strip()
    regex_mode = config["layer_filter_regex"]
    out.set("lora.targets", "full")
    denoiser = f"parts.{spec.denoiser.name}"
    if not text:
        named = spec.onetrainer_layer_presets.get(preset)
        if named is None:
            if preset not in ("full", "custom"):
                config.unsupported(
                    "layer_filter_preset",
                    f"not a OneTrainer preset of {spec.title} models, and layer_filter is empty: every layer trains",
                )
            # Every linear and convolution layer, as OneTrainer trains them (our `full` preset leaves out
            # a few, such as conv_in / conv_out and the embedders).
            out.set(f"{denoiser}.lora_regex", filter_regex(EVERY_LAYER, regex=True))
            return
        config.note(
            "layer_filter",
            f"empty, which OneTrainer's training reads as every layer; its UI fills in the {preset} preset's "
            f"{named.layer_filter!r}, which is used here",
        )
        text, regex_mode = named.layer_filter, False
    ours = _same_preset(spec, text, regex=regex_mode)
    if ours is None:
        out.set(f"{denoiser}.lora_regex", filter_regex(text, regex=regex_mode))
    elif ours != LoraTargets.FULL.value:
        out.set(f"{denoiser}.lora_targets", ours)


def _same_preset(spec: FamilySpec, text: str, *, regex: bool) -> str | None:
    """Our preset that adapts the layers OneTrainer's filter `text` does: that of a OneTrainer preset's own filter
    (where it is the same as one of ours), or the one whose filter `export` writes (`preset_filter`)."""
    normalised = ",".join(item.strip() for item in text.split(",") if item.strip())
    if regex:
        return next((t.value for t in LoraTargets if preset_filter(spec, t.value) == normalised), None)
    return next((p.same_as for p in spec.onetrainer_layer_presets.values() if p.layer_filter == normalised), None)


EVERY_LAYER = ".*"
"""The filter (in regex mode) of an empty `layer_filter`: OneTrainer then adapts every layer it can."""
DOT = r"\."
"""How a preset pattern of ours starts: with the dot before a module name."""
ADAPTABLE_ONLY = r"^(?!(?:.*\.)?[^.]*(?:norm|embedding)[^.]*$).*?"
"""OneTrainer's filter chooses among linear and convolution layers; our regex among every layer with weights.
So an imported filter starts with this: a path whose last name is a normalisation or embedding layer
never matches (the text after it is searched anywhere in the path, as OneTrainer does)."""


def filter_regex(text: str, *, regex: bool) -> str:
    """OneTrainer's comma list of substrings (or regexes) as one regex over our module paths."""
    patterns = [item.strip() for item in text.split(",") if item.strip()]
    if not regex:
        patterns = [re.escape(item) for item in patterns]
    body = patterns[0] if len(patterns) == 1 else "|".join(f"(?:{pattern})" for pattern in patterns)
    return f"{ADAPTABLE_ONLY}(?:{body})"


def preset_filter(spec: FamilySpec, preset: str) -> str:
    """Our LoRA target preset of the denoiser as one regex for OneTrainer's `layer_filter` (regex mode).

    The preset's patterns and those of the presets before it, joined into one regex: OneTrainer refuses an item
    of its comma list that matches no layer, and a pattern may match only some models of a family. Ours are
    searched in "." + module path, OneTrainer's in the bare path, so a leading `\\.` becomes "at the start
    or after a dot".
    """
    order = [target.value for target in LoraTargets]
    levels = order[: order.index(preset) + 1]
    patterns = [pattern for level in levels for pattern in spec.denoiser.lora_presets.get(level, ())]
    return "|".join(f"(?:{_in_bare_path(pattern)})" for pattern in patterns)


def _in_bare_path(pattern: str) -> str:
    return "(?<![^.])" + pattern.removeprefix(DOT) if pattern.startswith(DOT) else pattern


def filter_text(regex: str) -> str:
    """The inverse of `filter_regex`: the regex OneTrainer's filter takes (it picks the layer types itself)."""
    if regex.startswith(ADAPTABLE_ONLY) and regex.endswith(")"):
        return regex.removeprefix(ADAPTABLE_ONLY).removeprefix("(?:")[:-1]
    return regex


def map_embeddings(config: View, out: Target, method: str) -> None:
    if method == "embedding":
        embedding = config.child("embedding")
        for key, value in _embedding(embedding).items():
            out.set(f"embedding.{key}", value)
        if config["embedding_learning_rate"] is not None:
            out.set("embedding.learning_rate", config["embedding_learning_rate"])
    else:
        _note_unused_embedding(config.child("embedding"))
        if config.data.get("additional_embeddings"):
            if config["embedding_learning_rate"] is not None:
                out.set("embedding.learning_rate", config["embedding_learning_rate"])
        else:
            config.ignore("embedding_learning_rate", "no embedding trains")
    additional = []
    for item in config.items("additional_embeddings", embedding_defaults()):
        mapped = _embedding(item)
        mapped["train"] = item["train"]
        additional.append(mapped)
    if additional:
        out.set("embedding.additional", additional)
        if method == "lora" and config["bundle_additional_embeddings"]:
            config.note(
                "bundle_additional_embeddings", "embeddings are written as files in embeddings/ beside the LoRA"
            )
    else:
        config.skip("bundle_additional_embeddings")


def _note_unused_embedding(embedding: View) -> None:
    for key in embedding.defaults:
        if key in SILENT_KEYS:
            continue
        embedding.ignore(key, "only used by embedding training (OneTrainer ignores it too)")


def _embedding(item: View) -> dict[str, object]:
    mapped: dict[str, object] = {"placeholder": item["placeholder"], "init_text": item["initial_embedding_text"]}
    count = item["token_count"]
    if count is None:
        item.unsupported("token_count", "the vector count must be given (it is not taken from the init text); 1 here")
        mapped["vectors"] = 1
    else:
        mapped["vectors"] = count
    if item["model_name"]:
        mapped["init_from"] = item["model_name"]
    if stop_after(item, "stop_training_after") != "never":
        item.unsupported("stop_training_after", "embeddings train until the end")
    item.refuse("is_output_embedding", "embeddings are applied at the text encoder's input")
    if item.prefix.startswith("embedding."):
        item.refuse("train", "method embedding trains its embedding")
    item.skip("uuid")
    return mapped


def _check_dora_axis(config: View) -> None:
    """OneTrainer lets the user pick DoRA's axis; ours follows the output format, whose loaders compute only that
    axis exactly. A choice that matches the format imports as is."""
    fmt = OUTPUT_FORMATS["lora"].get(config["output_model_format"], "kohya")
    if bool(config["lora_decompose_output_axis"]) != dora_on_output(fmt):
        axis = "output row" if dora_on_output(fmt) else "input column"
        config.unsupported("lora_decompose_output_axis", f"DoRA's axis follows the output format ({fmt}: per {axis})")
