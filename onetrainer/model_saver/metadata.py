"""The header metadata every saved safetensors file carries: ModelSpec, common `ss_*` keys, our config.

UIs sort and label files by `modelspec.*` and `ss_*`; the resolved run config under `onetrainer_config`
makes every output reproducible. A file whose family or prediction type is unknown (a converted file
that never said) gets no architecture keys rather than a guessed one.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from onetrainer import __version__
from onetrainer.model.adapters.dora import OUTPUT
from onetrainer.util.family import Objective
from onetrainer.util.safetensors_meta import modelspec_metadata, ss_metadata

if TYPE_CHECKING:
    from onetrainer.util.config.schema import TrainConfig
    from onetrainer.util.family import FamilySpec

CONFIG_KEY = "onetrainer_config"
VERSION_KEY = "onetrainer_version"
NETWORK_MODULES = {"lora": "networks.lora", "dora": "lycoris.kohya", "loha": "lycoris.kohya", "lokr": "lycoris.kohya"}
_NOT_INHERITED = frozenset({"format", "sshs_model_hash", "sshs_legacy_hash", "modelspec.hash_sha256"})
NETWORK_ARGS = {"dora": {"algo": "lora", "dora_wd": "True"}, "loha": {"algo": "loha"}, "lokr": {"algo": "lokr"}}


def build_metadata(
    *,
    spec: FamilySpec | None,
    title: str,
    prediction_type: str | None = None,
    adapter: str | None = None,
    lora_kind: str | None = None,
    rank: int | None = None,
    alpha: float | None = None,
    dora_axis: str | None = None,
    trigger_phrase: str | None = None,
    config: TrainConfig | None = None,
    inherited: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """Metadata for one file. `adapter` is None (full model), "lora" or "embedding".

    A DoRA's `dora_axis` ("input" or "output", see `model.adapters.dora`) is written as LyCORIS's
    `wd_on_out` network argument.

    `inherited` (a converted file's own header) is kept, and our keys are written over it. Its hashes of the
    file's bytes are not: A1111 trusts `sshs_model_hash` over hashing the file, and a converted file sharing
    its source's hash is looked up as the source (infotext, Civitai).
    """
    metadata = {k: v for k, v in (inherited or {}).items() if k not in _NOT_INHERITED}
    resolution = _largest_resolution(config)
    known = spec is not None and (prediction_type is not None or spec.objective is not Objective.DDPM)
    if spec is not None and known:
        metadata.update(
            modelspec_metadata(
                spec=spec,
                title=title,
                prediction_type=prediction_type,
                adapter=adapter,
                resolution=resolution,
                trigger_phrase=trigger_phrase,
            )
        )
        metadata.update(
            ss_metadata(
                spec=spec,
                prediction_type=prediction_type,
                **_ss_fields(lora_kind, rank, alpha, dora_axis, title, config),
            )
        )
    metadata[VERSION_KEY] = __version__
    if config is not None:
        metadata[CONFIG_KEY] = json.dumps(config.model_dump(mode="json"), sort_keys=True)
    return metadata


def _largest_resolution(config: TrainConfig | None) -> int | None:
    """The side a run trained at; a multi-resolution run's largest, the size its outputs are meant for."""
    resolution = config.data.resolution if config is not None else None
    return max(resolution) if isinstance(resolution, list) else resolution


def _ss_fields(
    lora_kind: str | None,
    rank: int | None,
    alpha: float | None,
    dora_axis: str | None,
    title: str,
    config: TrainConfig | None,
) -> dict[str, Any]:
    fields: dict[str, Any] = {"output_name": title}
    if lora_kind is not None:
        fields["network_module"] = NETWORK_MODULES[lora_kind]
        fields["network_dim"] = rank
        fields["network_alpha"] = alpha
        fields["network_args"] = NETWORK_ARGS.get(lora_kind)
        if lora_kind == "dora" and dora_axis is not None:
            fields["network_args"] = {**NETWORK_ARGS["dora"], "wd_on_out": str(dora_axis == OUTPUT)}
    if config is not None:
        fields["seed"] = config.training.seed
        fields["learning_rate"] = config.training.learning_rate
        fields["optimizer"] = config.training.optimizer.value
        fields["lr_scheduler"] = config.training.lr_scheduler.value
        fields["mixed_precision"] = config.training.precision.value
        largest = _largest_resolution(config)
        fields["resolution"] = None if largest is None else (largest, largest)
    return fields
