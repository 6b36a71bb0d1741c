"""OneTrainer's `__version` migrations, re-done on plain dicts and tolerant of missing keys.

A TrainConfig at version v runs the steps v, v+1, ... 10 (each takes it one version up), as
OneTrainer does when it loads a file; concept objects have their own two steps. OneTrainer indexes
some keys without a fallback (`model_type`, `prior`, the global `weight_dtype`), so a sparse old file
can fail to load there; here a missing key means that step has nothing to do.

A file without `__version` is either one of OneTrainer's sparse built-in presets (current schema,
loaded unmigrated) or a file from before February 2024, which still has the flat keys that step 0
moves (`optimizer_*`, `train_unet`, ...); `source_version` tells them apart by those keys.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

from onetrainer.util.config.onetrainer_json.defaults import migration_model_types, part_names
from onetrainer.util.config.onetrainer_json.tables import CURRENT_VERSION
from onetrainer.util.errors import UserError

_PART_FIELDS = ("learning_rate", "weight_dtype", "model_name")
_LEGACY_OPTIMIZER_PREFIX = "optimizer_"


def _legacy_part_keys() -> set[str]:
    keys = set()
    for part in part_names():
        keys |= {f"train_{part}", f"train_{part}_epochs", *(f"{part}_{field}" for field in _PART_FIELDS)}
    return keys


def _has_legacy_keys(config: dict[str, Any]) -> bool:
    legacy = _legacy_part_keys() | {"min_snr_gamma", "save_after", "lora_layers", "embedding_model_names"}
    return any(
        key in legacy or (key.startswith(_LEGACY_OPTIMIZER_PREFIX) and key != "optimizer_defaults") for key in config
    )


def source_version(config: dict[str, Any]) -> int | None:
    """The version to migrate from; None for a sparse preset, which loads as it is."""
    version = config.get("__version")
    if version is None:
        return 0 if _has_legacy_keys(config) else None
    if isinstance(version, bool) or not isinstance(version, int) or version < 0:
        raise UserError(
            f"__version {version!r} is not a OneTrainer config version (a whole number, {CURRENT_VERSION} now)",
            where="__version",
            hint="Export the config again from OneTrainer, or remove the key to read it as a sparse preset.",
        )
    return version


def _v0_optimizer_object(config: dict[str, Any]) -> None:
    name = config.get("optimizer")
    if isinstance(name, dict):
        return
    optimizer: dict[str, Any] = {"optimizer": name} if name is not None else {}
    for key in [key for key in config if key.startswith(_LEGACY_OPTIMIZER_PREFIX) and key != "optimizer_defaults"]:
        optimizer[key.removeprefix(_LEGACY_OPTIMIZER_PREFIX)] = config.pop(key)
    config.pop("optimizer", None)
    if optimizer:
        config["optimizer"] = optimizer
        if name is not None:
            config.setdefault("optimizer_defaults", {})[name] = copy.deepcopy(optimizer)


def _v1_part_objects(config: dict[str, Any]) -> None:
    for part in part_names():
        existing = config.get(part)
        target: dict[str, Any] = existing if isinstance(existing, dict) else {}
        if f"train_{part}" in config:
            target["train"] = config.pop(f"train_{part}")
        if f"train_{part}_epochs" in config:
            target["stop_training_after"] = config.pop(f"train_{part}_epochs")
            target["stop_training_after_unit"] = "EPOCH"
        for field in _PART_FIELDS:
            if f"{part}_{field}" in config:
                target[field] = config.pop(f"{part}_{field}")
        if target:
            config[part] = target
    embedding: dict[str, Any] = {}
    names = config.pop("embedding_model_names", None)
    if isinstance(names, list) and names:
        embedding["model_name"] = names[0]
    for key in ("token_count", "initial_embedding_text"):
        if key in config:
            embedding[key] = config.pop(key)
    if embedding:
        config["embeddings"] = [embedding]


def _v2_loss_weight(config: dict[str, Any]) -> None:
    gamma = config.pop("min_snr_gamma", 0.0) or 0.0
    if gamma:
        config["loss_weight_fn"] = "MIN_SNR_GAMMA"
        config["loss_weight_strength"] = gamma
    elif config.get("model_type") in migration_model_types("p2_loss_weight"):
        config["loss_weight_fn"] = "P2"
        config["loss_weight_strength"] = 1.0


def _v3_timestep_distribution(config: dict[str, Any]) -> None:
    weight = config.get("noising_weight", 0.0) or 0.0
    if weight:
        config["timestep_distribution"] = "SIGMOID"
        config["noising_bias"] = (config.get("noising_bias", 0.0) or 0.0) - 0.5
    else:
        config["timestep_distribution"] = "UNIFORM"
        config["noising_weight"] = 0.0
        config["noising_bias"] = 0.0


def _v4_checkpointing_mode(config: dict[str, Any]) -> None:
    value = config.get("gradient_checkpointing")
    if isinstance(value, bool):
        config["gradient_checkpointing"] = "ON" if value else "OFF"


def _v5_save_every(config: dict[str, Any]) -> None:
    for old, new in (("save_after", "save_every"), ("save_after_unit", "save_every_unit")):
        if old in config:
            config[new] = config.pop(old)


def _v6_layer_preset(config: dict[str, Any]) -> None:
    if "lora_layer_preset" in config and config["lora_layer_preset"] is None:
        config["lora_layer_preset"] = "full"


def _v7_layer_filter(config: dict[str, Any]) -> None:
    for old, new in (
        ("lora_layers", "layer_filter"),
        ("lora_layer_preset", "layer_filter_preset"),
        ("lora_layers_regex", "layer_filter_regex"),
    ):
        if old in config:
            config[new] = config.pop(old)


def _v8_transformer_from_prior(config: dict[str, Any]) -> None:
    if config.get("model_type") not in migration_model_types("prior_denoiser") and isinstance(
        config.get("prior"), dict
    ):
        config["transformer"] = copy.deepcopy(config["prior"])


def _v9_part_weight_dtypes(config: dict[str, Any]) -> None:
    dtype = config.pop("weight_dtype", None)
    if dtype is None:
        return
    for part in part_names():
        target = config.get(part)
        if isinstance(target, dict) and target.get("weight_dtype", "NONE") == "NONE":
            target["weight_dtype"] = dtype


def spread_offloading(config: dict[str, Any]) -> None:
    """Step 10 (a): the global checkpointing and offloading settings move into every part.

    Also run on version-11 files: those saved in the two days after the version bump still hold
    the global keys, which today's OneTrainer would ignore.
    """
    if "enable_async_offloading" in config:
        config["async_offloading"] = config.pop("enable_async_offloading")
    globals_ = ("gradient_checkpointing", "enable_activation_offloading", "layer_offload_fraction")
    if not any(key in config for key in globals_):
        return
    mode = config.pop("gradient_checkpointing", "ON")
    activation = config.pop("enable_activation_offloading", True)
    fraction = config.pop("layer_offload_fraction", 0.0)
    offloaded = mode == "CPU_OFFLOADED"
    for part in part_names():
        target = config.setdefault(part, {}) if isinstance(config.get(part, {}), dict) else {}
        target["gradient_checkpointing"] = mode != "OFF"
        target["activation_offloading"] = bool(offloaded and activation)
        target["offload_fraction"] = fraction if offloaded else 0.0


def _v10_output_format(config: dict[str, Any]) -> None:
    spread_offloading(config)
    if config.get("output_model_format") == "SAFETENSORS":
        method = config.get("training_method", "FINE_TUNE")
        if method == "LORA":
            config["output_model_format"] = "LEGACY_LORA"
        elif method != "EMBEDDING":
            config["output_model_format"] = "LEGACY_SAFETENSORS"


STEPS: tuple[Callable[[dict[str, Any]], None], ...] = (
    _v0_optimizer_object,
    _v1_part_objects,
    _v2_loss_weight,
    _v3_timestep_distribution,
    _v4_checkpointing_mode,
    _v5_save_every,
    _v6_layer_preset,
    _v7_layer_filter,
    _v8_transformer_from_prior,
    _v9_part_weight_dtypes,
    _v10_output_format,
)
"""STEPS[v] takes a config from version v to v + 1."""


def _embeddings_list(config: dict[str, Any]) -> None:
    """The `embeddings` list (2024-02 until it was replaced) becomes `embedding` + `additional_embeddings`.

    OneTrainer drops the list without a migration; the first entry was the trained embedding.
    """
    embeddings = config.pop("embeddings", None)
    if not isinstance(embeddings, list) or not embeddings:
        return
    first, *rest = embeddings
    if isinstance(first, dict) and "embedding" not in config:
        config["embedding"] = first
    if rest and "additional_embeddings" not in config:
        config["additional_embeddings"] = rest


def migrate(config: dict[str, Any]) -> tuple[dict[str, Any], int | None]:
    """`config` at the current version, and the version it came from (None: a sparse preset)."""
    migrated = copy.deepcopy(config)
    version = source_version(migrated)
    if version is not None:
        for step in STEPS[version:CURRENT_VERSION]:
            step(migrated)
        if version >= CURRENT_VERSION:
            spread_offloading(migrated)
        migrated["__version"] = CURRENT_VERSION
    _embeddings_list(migrated)
    for key in ("concepts",):
        if isinstance(migrated.get(key), list):
            migrated[key] = [migrate_concept(item) for item in migrated[key]]
    return migrated, version


def migrate_concept(concept: Any) -> Any:
    """ConceptConfig 0 -> 2: `repeats` becomes `balancing`; `validation_concept` becomes `type`."""
    if not isinstance(concept, dict):
        return concept
    migrated = dict(concept)
    if "repeats" in migrated:
        migrated.setdefault("balancing", migrated.pop("repeats"))
        migrated.pop("repeats", None)
    if "validation_concept" in migrated:
        validation = migrated.pop("validation_concept")
        migrated.setdefault("type", "VALIDATION" if validation else "STANDARD")
    return migrated
