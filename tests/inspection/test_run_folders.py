"""`inspect` on the trainer's backup folders and on whole run workspaces."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from onetrainer.inspection.dispatch import inspect_path
from onetrainer.trainer.backup import write_backup
from onetrainer.util.errors import UserError

CONFIG_YAML = "model:\n  type: sd15\n  base: tiny:sd15\nmethod: lora\nlora:\n  rank: 8\n"


def _backup(workspace: Path, step: int) -> Path:
    weights = {"unet.a.lora_A.weight": torch.zeros(8, 32), "unet.a.lora_B.weight": torch.zeros(32, 8)}
    return write_backup(
        workspace / "backups",
        step=step,
        epoch=step // 10,
        weights=weights,
        state={"step": step},
        config_yaml=CONFIG_YAML,
    )


def test_backup_reports_step_epoch_and_config(tmp_path: Path) -> None:
    backup = _backup(tmp_path, 25)

    result = inspect_path(backup)

    assert (result.kind, result.format, result.model_type) == ("backup", "onetrainer-backup-v1", "sd15")
    details = result.details
    assert (details["step"], details["epoch"]) == (25, 2)
    assert details["settings"] == {"model.type": "sd15", "model.base": "tiny:sd15", "method": "lora", "lora.rank": 8}
    assert details["weights"] == {"tensors": 2, "parameters": 512, "dtype": "float32"}
    assert details["config"]["lora"] == {"rank": 8}
    assert "config" in result.json_only


def test_workspace_lists_its_backups(tmp_path: Path) -> None:
    (tmp_path / "config.yaml").write_text(CONFIG_YAML)
    _backup(tmp_path, 10)
    _backup(tmp_path, 20)
    (tmp_path / "backups" / "step-00000030").mkdir()  # incomplete: no meta.json

    result = inspect_path(tmp_path)

    assert (result.kind, result.model_type) == ("workspace", "sd15")
    assert result.details["backups"] == [
        {"name": "step-00000010", "step": 10, "epoch": 1},
        {"name": "step-00000020", "step": 20, "epoch": 2},
    ]
    assert "latest backup at step 20" in result.summary


def test_workspace_lists_a_damaged_backup_as_damaged(tmp_path: Path) -> None:
    (tmp_path / "config.yaml").write_text(CONFIG_YAML)
    (_backup(tmp_path, 10) / "meta.json").write_text("{bad")

    result = inspect_path(tmp_path)

    assert result.details["backups"] == []
    [damaged] = result.details["damaged_backups"]
    assert damaged["name"] == "step-00000010"
    assert damaged["problem"].startswith("meta.json is damaged: it is not valid JSON")
    assert result.summary == "training workspace, no complete backup, 1 damaged backup"


def test_a_damaged_backup_folder_is_named_damaged(tmp_path: Path) -> None:
    backup = _backup(tmp_path, 10)
    (backup / "meta.json").write_text("[]")
    with pytest.raises(UserError, match=r"meta\.json is damaged: it holds a JSON list, not an object"):
        inspect_path(backup)
