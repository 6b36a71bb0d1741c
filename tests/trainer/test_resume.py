"""Resuming refuses config changes to what is trained, and allows cadence/output/length changes."""

from __future__ import annotations

from pathlib import Path

import pytest

from onetrainer.trainer.resume import check_resume_compatible, differing_keys
from onetrainer.util.config.loader import dump_config, load_config
from onetrainer.util.config.schema import TrainConfig
from onetrainer.util.errors import UserError


def _config(tmp_path: Path, *overrides: str) -> TrainConfig:
    base = ["model.base=org/model", f"data.concepts.0.path={tmp_path}", "training.learning_rate=1e-4"]
    return load_config(None, [*base, *overrides])


def test_harmless_changes_are_allowed(tmp_path: Path) -> None:
    saved = dump_config(_config(tmp_path))
    changed = _config(
        tmp_path,
        "saving.backup_every=10 steps",
        "saving.output=elsewhere.safetensors",
        "sampling.every=1 epoch",
        "training.epochs=50",
        "logging.tensorboard=false",
    )
    check_resume_compatible(changed, saved, where="backup")


def test_changes_to_what_is_trained_are_refused_with_every_key(tmp_path: Path) -> None:
    saved = dump_config(_config(tmp_path))
    changed = _config(tmp_path, "training.learning_rate=2e-4", "lora.rank=4", "method=full")
    with pytest.raises(UserError) as error:
        check_resume_compatible(changed, saved, where="backups/step-00000010")
    message = error.value.message
    assert "training.learning_rate" in message
    assert "lora.rank" in message
    assert "was 0.0001 in the backup, now 0.0002" in message
    assert "saving" not in message
    assert error.value.where == "backups/step-00000010"


def test_added_and_removed_list_items_are_differences() -> None:
    problems = differing_keys({"data": {"concepts": [{"path": "a"}]}}, {"data": {"concepts": []}})
    assert [problem.path for problem in problems] == ["data.concepts", "data.concepts.0.path"]


def test_a_backup_written_before_a_key_existed_continues_at_its_default(tmp_path: Path) -> None:
    import yaml

    older = yaml.safe_load(dump_config(_config(tmp_path)))
    del older["training"]["threads"]
    del older["data"]["max_image_pixels"]
    del older["data"]["concepts"][0]["caption"]["prefix"]
    check_resume_compatible(_config(tmp_path), yaml.safe_dump(older), where="backup")


def test_the_thread_count_may_change(tmp_path: Path) -> None:
    check_resume_compatible(_config(tmp_path, "training.threads=3"), dump_config(_config(tmp_path)), where="backup")
