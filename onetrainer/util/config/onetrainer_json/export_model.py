"""Export the model side of a run config to OneTrainer: model type and base, method, parts, adapters.

Each function reads our config through a `View` (so every setting it carries is recorded) and writes
OneTrainer's keys into `ot`, a complete v11 config of defaults.
"""

from __future__ import annotations

import uuid
from typing import Any

from onetrainer.util.config.onetrainer_json.export_output import saved_format
from onetrainer.util.config.onetrainer_json.findings import LACKING, View
from onetrainer.util.config.onetrainer_json.import_adapters import filter_text, preset_filter
from onetrainer.util.config.onetrainer_json.import_model import LAYER_SKIP_KEYS
from onetrainer.util.config.onetrainer_json.tables import METHODS, PEFT_TYPES, WEIGHT_DTYPES, reverse
from onetrainer.util.config.output import dora_on_output
from onetrainer.util.config.types import CadenceUnit
from onetrainer.util.errors import UserError
from onetrainer.util.family import FamilySpec, Role

TEXT_ENCODER_LORA = "OneTrainer's text-encoder LoRA covers every layer"
_NAMESPACE = uuid.UUID("6f1d9c2e-5b0a-4e55-9a3c-0d7e1b2a4c68")
"""Embedding uuids are derived from the placeholder, so exporting twice writes the same file."""


def export_model(ours: View, ot: dict[str, Any], spec: FamilySpec) -> None:
    if not spec.onetrainer_model_types:
        raise UserError(f"OneTrainer has no model type for {spec.title} models", where="model.type")
    model = ours.child("model")
    model.skip("type", "dtype")
    ot["model_type"] = spec.onetrainer_model_types[0]
    ot["base_model_name"] = model["base"]
    if model["vae"] is not None:
        ot[spec.vae.name]["model_name"] = model["vae"]
    prediction = model["prediction_type"]
    if prediction == "v_prediction":
        ot["force_v_prediction"] = True
    elif prediction == "epsilon":
        ot["force_epsilon_prediction"] = True
    elif prediction != "auto":
        model.unsupported("prediction_type", "OneTrainer forces epsilon or v-prediction only")
    ot["rescale_noise_scheduler_to_zero_terminal_snr"] = ours.child("noise")["zero_terminal_snr"]
    ot["training_method"] = reverse(METHODS)[ours["method"]]


def export_options(ours: View, ot: dict[str, Any], spec: FamilySpec) -> None:
    """`model.options` that are OneTrainer settings (`FamilySpec.onetrainer_options`); the others are listed."""
    model = ours.child("model")
    options = model["options"] or {}
    if spec.options is None:
        return
    defaults = spec.options.model_validate({}).model_dump(mode="json")
    by_option = {option: key for key, option in spec.onetrainer_options.items()}
    fixed = spec.onetrainer_fixed_options
    for option, value in {**defaults, **options}.items():
        key = by_option.get(option)
        if key is not None:
            part, _, setting = key.rpartition(".")
            (ot[part] if part else ot)[setting] = value
        elif option in fixed and value != fixed[option]:
            ours.ledger.refuse(f"model.options.{option}", value, f"OneTrainer always uses {fixed[option]}")
        elif option not in fixed and value != defaults.get(option):
            ours.ledger.refuse(f"model.options.{option}", value, LACKING)


def export_parts(ours: View, ot: dict[str, Any], spec: FamilySpec) -> None:
    parts = ours.child("parts")
    method = ours["method"]
    default_dtype = ours.child("model")["dtype"]
    for component in spec.components:
        part = parts.child(component.name)
        target = ot[component.name]
        target["weight_dtype"] = reverse(WEIGHT_DTYPES)[part["weight_dtype"] or default_dtype]
        if component.role is Role.VAE:
            continue
        if method == "embedding":
            target["train"] = False
        else:
            target["train"] = bool(part["train"])
        if part["learning_rate"] is not None:
            target["learning_rate"] = part["learning_rate"]
        _stop_after(part, target, ours.child("training")["gradient_accumulation_steps"])
        if component.role is Role.TEXT_ENCODER:
            key = next((k for k, name in LAYER_SKIP_KEYS.items() if name == component.name), None)
            if key is None:
                part.refuse("layer_skip", "OneTrainer has layer skips for four text encoders only")
            else:
                ot[key] = part["layer_skip"]
        if component.role is Role.DENOISER:
            target["gradient_checkpointing"] = ours.child("training")["gradient_checkpointing"]


def _stop_after(part: View, target: dict[str, Any], accumulation: int) -> None:
    """The stop point; OneTrainer's steps are batches, `accumulation` of them to one of ours."""
    text = part["stop_after"]
    if text == "never":
        target["stop_training_after_unit"] = "NEVER"
        return
    count, unit = text.split()
    epochs = unit.startswith(CadenceUnit.EPOCH.value)
    target["stop_training_after"] = int(float(count)) * (1 if epochs else accumulation)
    target["stop_training_after_unit"] = "EPOCH" if epochs else "STEP"
    if not float(count).is_integer():
        part.unsupported("stop_after", "OneTrainer stops after a whole number of steps or epochs")


def export_lora(ours: View, ot: dict[str, Any], spec: FamilySpec) -> None:
    lora = ours.child("lora")
    if ours["method"] != "lora":
        return
    kind = lora["type"]
    ot["peft_type"] = reverse(PEFT_TYPES).get(kind, "LORA")
    ot["lora_decompose"] = kind == "dora"
    if kind == "dora":
        ot["lora_decompose_output_axis"] = dora_on_output(saved_format(ours, spec))
    ot["lora_rank"] = lora["rank"]
    if kind == "lokr":
        ot["lokr_dim"] = lora["rank"]
    ot["lora_alpha"] = lora["alpha"]
    ot["dropout_probability"] = lora["dropout"]
    if lora["init_from"] is not None:
        ot["lora_model_name"] = lora["init_from"]
    parts = ours.child("parts")
    preset, regex = lora["targets"], lora["regex"]
    for component in spec.components:
        if component.role is Role.VAE:
            continue
        part = parts.child(component.name)
        own_preset, own_regex = part["lora_targets"], part["lora_regex"]
        if component.role is Role.DENOISER:
            where, key = (part, "lora_regex") if own_regex else (lora, "regex")
            if "," in filter_text(own_regex or regex or ""):
                where.unsupported(key, "OneTrainer splits its layer filter at commas")
            _layer_filter(ot, spec, own_preset or preset, own_regex or regex)
        elif part["train"] and ((own_regex or regex) is not None or (own_preset or preset) != "full"):
            if own_regex or own_preset:
                part.unsupported("lora_regex" if own_regex else "lora_targets", TEXT_ENCODER_LORA)
            else:
                lora.unsupported("regex" if regex else "targets", TEXT_ENCODER_LORA)


def _layer_filter(ot: dict[str, Any], spec: FamilySpec, preset: str, regex: str | None) -> None:
    """The denoiser's LoRA layers in `layer_filter`, the only setting OneTrainer's training reads (empty: every
    layer): the patterns of its preset that adapts the same layers as ours, named; else ours, as a regex."""
    named = next((name for name, p in spec.onetrainer_layer_presets.items() if p.same_as == preset), None)
    if regex is None and named is not None:
        ot["layer_filter_preset"] = named
        ot["layer_filter"] = spec.onetrainer_layer_presets[named].layer_filter
        ot["layer_filter_regex"] = False
        return
    ot["layer_filter_preset"] = "custom"
    ot["layer_filter"] = filter_text(regex) if regex is not None else preset_filter(spec, preset)
    ot["layer_filter_regex"] = True


def export_embeddings(ours: View, ot: dict[str, Any]) -> None:
    embedding = ours.child("embedding")
    if ours["method"] == "embedding":
        ot["embedding"].update(_embedding(embedding))
    else:
        for key in ("placeholder", "vectors", "init_text", "init_from"):
            embedding.ignore(key, "only used by embedding training")
    if embedding["learning_rate"] is not None:
        ot["embedding_learning_rate"] = embedding["learning_rate"]
    additional = []
    for item in embedding.items("additional", {}):
        exported = _embedding(item)
        exported["train"] = item["train"]
        additional.append(exported)
    ot["additional_embeddings"] = additional
    if additional and ours["method"] == "lora":
        ot["bundle_additional_embeddings"] = False


def _embedding(item: View) -> dict[str, Any]:
    return {
        "__version": 0,
        "uuid": str(uuid.uuid5(_NAMESPACE, item["placeholder"])),
        "model_name": item["init_from"] or "",
        "placeholder": item["placeholder"],
        "train": True,
        "stop_training_after": None,
        "stop_training_after_unit": "NEVER",
        "token_count": item["vectors"],
        "initial_embedding_text": item["init_text"],
        "is_output_embedding": False,
    }
