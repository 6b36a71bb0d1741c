"""Header metadata grouped the way users think of it: ModelSpec, kohya `ss_*`, ours, everything else.

Values stay the strings the header holds, except where a key is known to carry JSON (our config,
diffusers' LoRA config, sd-scripts' structured `ss_*` keys), which is decoded so `--json` nests it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from onetrainer.model_saver.metadata import CONFIG_KEY, VERSION_KEY
from onetrainer.util.keymaps.lora_peft import DIFFUSERS_METADATA_KEY

JSON_KEYS = frozenset(
    {CONFIG_KEY, DIFFUSERS_METADATA_KEY, "ss_network_args", "ss_tag_frequency", "ss_dataset_dirs", "ss_datasets"}
)
CONFIG_SUMMARY_KEYS = (
    ("model", "type"),
    ("model", "base"),
    ("method",),
    ("preset",),
    ("lora", "rank"),
    ("lora", "alpha"),
    ("data", "resolution"),
    ("training", "learning_rate"),
    ("training", "seed"),
)


def _decoded(key: str, value: str) -> Any:
    if key not in JSON_KEYS:
        return value
    try:
        return json.loads(value)
    except json.JSONDecodeError:
        return value


def group_metadata(metadata: Mapping[str, str]) -> dict[str, dict[str, Any]]:
    """{"modelspec": ..., "kohya": ..., "onetrainer": ..., "other": ...}, empty groups left out."""
    groups: dict[str, dict[str, Any]] = {"modelspec": {}, "kohya": {}, "onetrainer": {}, "other": {}}
    for key in sorted(metadata):
        value = _decoded(key, metadata[key])
        if key.startswith("modelspec."):
            groups["modelspec"][key.removeprefix("modelspec.")] = value
        elif key.startswith(("ss_", "sshs_")):
            groups["kohya"][key] = value
        elif key == CONFIG_KEY:
            groups["onetrainer"]["config"] = value
        elif key == VERSION_KEY:
            groups["onetrainer"]["version"] = value
        else:
            groups["other"][key] = value
    return {name: group for name, group in groups.items() if group}


def config_summary(config: Mapping[str, Any]) -> dict[str, Any]:
    """The few settings that say what a run was (`model.type`, `method`, `lora.rank`, ...)."""
    summary: dict[str, Any] = {}
    for path in CONFIG_SUMMARY_KEYS:
        value: Any = config
        for part in path:
            value = value.get(part) if isinstance(value, Mapping) else None
        if value is not None:
            summary[".".join(path)] = value
    concepts = config.get("data", {}).get("concepts") if isinstance(config.get("data"), Mapping) else None
    if isinstance(concepts, list):
        summary["data.concepts"] = len(concepts)
    return summary
