"""What the commands use: an imported config as YAML text, or validated (for `train` and `--check`)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from onetrainer.util.config.onetrainer_json.findings import Finding
from onetrainer.util.config.onetrainer_json.importer import Imported, import_onetrainer
from onetrainer.util.errors import ConfigError, ConfigProblem

if TYPE_CHECKING:
    from onetrainer.util.config.schema import TrainConfig

UNSUPPORTED_HINT = (
    "Pass --allow-unsupported to train without them, or convert the config with `onetrainer import CONFIG.json "
    "-o run.yaml` and adjust it."
)


class UnsupportedSettings(ConfigError):
    """A OneTrainer config uses settings onetrainer cannot honour; every one is listed, with why."""

    title = "Unsupported OneTrainer settings"

    def __init__(self, findings: list[Finding], *, where: str) -> None:
        super().__init__(
            [ConfigProblem(item.key, item.why, item.value, has_value=True) for item in findings],
            where=where,
            hint=UNSUPPORTED_HINT,
        )


def finding_lines(findings: list[Finding]) -> list[str]:
    return [str(item) for item in findings]


def render_yaml(imported: Imported) -> str:
    """The run config as YAML, headed by comments: the source, then every unsupported setting and note."""
    lines = [
        f"# Imported from the OneTrainer config {imported.source} ({imported.describe_source()}).",
        f"# Concepts: {imported.concepts_from}; samples: {imported.samples_from}.",
    ]
    if imported.unsupported:
        lines += ["#", "# Unsupported OneTrainer settings, not applied (`onetrainer train` of the JSON refuses them"]
        lines += ["# without --allow-unsupported):"]
        lines += [f"#   {line}" for line in finding_lines(imported.unsupported)]
    if imported.notes:
        lines += ["#", "# Notes:"]
        lines += [f"#   {line}" for line in finding_lines(imported.notes)]
    body = yaml.safe_dump(imported.data, sort_keys=False, allow_unicode=True, width=110)
    return "\n".join(lines) + "\n" + body


def check_imported(imported: Imported, *, check_paths: bool) -> TrainConfig:
    """Validate the imported config as a run config (a mapping we cannot express fails here, listed)."""
    from onetrainer.util.config.loader import validate

    return validate(copy.deepcopy(imported.data), check_paths=check_paths, where=str(imported.source))


def load_onetrainer_config(
    path: Path,
    overrides: list[str] | tuple[str, ...] = (),
    *,
    allow_unsupported: bool = False,
    check_paths: bool = True,
) -> tuple[TrainConfig, Imported]:
    """Import a OneTrainer config, refuse it if it uses unsupported settings, apply overrides, validate."""
    from onetrainer.util.config.loader import resolve_raw, validate

    imported = import_onetrainer(path)
    if imported.unsupported and not allow_unsupported:
        raise UnsupportedSettings(imported.unsupported, where=str(path))
    raw, problems = resolve_raw(copy.deepcopy(imported.data), overrides)
    return validate(raw, check_paths=check_paths, where=str(path), earlier_problems=problems), imported
