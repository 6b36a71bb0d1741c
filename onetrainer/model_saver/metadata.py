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
from onetrainer.util.safetensors_meta import SS_BASE_MODEL_VERSION, modelspec_metadata, ss_metadata

if TYPE_CHECKING:
    from onetrainer.util.config.schema import TrainConfig

CONFIG_KEY = "onetrainer_config"
VERSION_KEY = "onetrainer_version"
NETWORK_MODULES = {"lora": "networks.lora", "dora": "lycoris.kohya", "loha": "lycoris.kohya", "lokr": "lycoris.kohya"}
NETWORK_ARGS = {"dora": {"algo": "lora", "dora_wd": "True"}, "loha": {"algo": "loha"}, "lokr": {"algo": "lokr"}}


def build_metadata(
    *,
    family: str | None,
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

    `inherited` (a converted file's own header) is kept, and our keys are written over it.
    """
    metadata = {k: v for k, v in (inherited or {}).items() if k != "format"}
    v_prediction = prediction_type == "v_prediction"
    resolution = config.data.resolution if config is not None else None
    if family in SS_BASE_MODEL_VERSION and prediction_type is not None:
        metadata.update(
            modelspec_metadata(
                family=family,
                title=title,
                v_prediction=v_prediction,
                adapter=adapter,
                resolution=resolution,
                trigger_phrase=trigger_phrase,
            )
        )
        metadata.update(
            ss_metadata(
                family=family, v_prediction=v_prediction, **_ss_fields(lora_kind, rank, alpha, dora_axis, title, config)
            )
        )
    metadata[VERSION_KEY] = __version__
    if config is not None:
        metadata[CONFIG_KEY] = json.dumps(config.model_dump(mode="json"), sort_keys=True)
    return metadata


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
        fields["resolution"] = (config.data.resolution, config.data.resolution)
    return fields
