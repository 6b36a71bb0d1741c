"""Backups: exact round trip through weights_only loading, rolling deletion, and crash safety."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from onetrainer.trainer import backup as backup_module
from onetrainer.trainer.backup import find_backup, list_backups, prune_backups, read_backup, write_backup
from onetrainer.util.errors import UserError
from onetrainer.util.seeding import capture_rng_state


def _write(directory: Path, step: int) -> Path:
    weights = {"lora.down": torch.full((2, 3), float(step)), "lora.up": torch.arange(6.0).reshape(3, 2)}
    state = {
        "optimizer": {"state": {0: {"exp_avg": torch.ones(2)}}, "param_groups": [{"lr": 1e-4, "betas": (0.9, 0.99)}]},
        "rng": capture_rng_state(),
        "loop": {"step": step},
    }
    return write_backup(
        directory, step=step, epoch=step // 10, weights=weights, state=state, config_yaml=f"step: {step}\n"
    )


def test_round_trip_is_exact_and_loads_with_weights_only(tmp_path: Path) -> None:
    path = _write(tmp_path, 12)
    assert path.name == "step-00000012"
    restored = read_backup(path)
    assert restored.step == 12
    assert restored.epoch == 1
    assert torch.equal(restored.weights["lora.down"], torch.full((2, 3), 12.0))
    assert restored.state["optimizer"]["param_groups"][0]["betas"] == (0.9, 0.99)
    assert torch.equal(restored.state["rng"]["torch"], capture_rng_state()["torch"])
    assert restored.config_yaml == "step: 12\n"


def test_rolling_backups_keep_the_newest_k(tmp_path: Path) -> None:
    for step in (5, 10, 15, 20, 25):
        _write(tmp_path, step)
        prune_backups(tmp_path, keep_last=2)
    assert [path.name for path in list_backups(tmp_path)] == ["step-00000020", "step-00000025"]
    assert sorted(path.name for path in tmp_path.iterdir()) == ["step-00000020", "step-00000025"]


def test_crash_during_a_backup_leaves_the_previous_one_loadable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _write(tmp_path, 10)

    def crash(*args: object, **kwargs: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(OSError, match="disk full"):
        _write(tmp_path, 20)
    monkeypatch.undo()
    assert [path.name for path in list_backups(tmp_path)] == ["step-00000010"]
    assert read_backup(find_backup(tmp_path, "last")).step == 10
    assert [path.name for path in tmp_path.iterdir()] == ["step-00000010"]


def test_killed_write_leftovers_are_ignored_then_cleaned(tmp_path: Path) -> None:
    _write(tmp_path, 10)
    leftover = tmp_path / ".step-00000020.abc.tmp"
    leftover.mkdir()
    (leftover / "trainable.safetensors").write_bytes(b"partial")
    incomplete = tmp_path / "step-00000030"
    incomplete.mkdir()
    assert find_backup(tmp_path, "last").name == "step-00000010"
    prune_backups(tmp_path, keep_last=3)
    assert not leftover.exists()


def test_find_backup_accepts_a_folder_or_a_workspace(tmp_path: Path) -> None:
    backups = tmp_path / "backups"
    path = _write(backups, 7)
    assert find_backup(backups, path) == path
    assert find_backup(backups, tmp_path) == path
    with pytest.raises(UserError, match="not a backup folder"):
        find_backup(backups, tmp_path / "nothing")
    with pytest.raises(UserError, match="no backup"):
        find_backup(tmp_path / "empty", "last")


def test_a_backup_with_a_pickled_object_is_refused(tmp_path: Path) -> None:
    path = _write(tmp_path, 3)
    torch.save({"evil": backup_module.Backup}, path / "state.pt")
    with pytest.raises(UserError, match="is refused") as error:
        read_backup(path)
    assert "weights_only=False" not in error.value.message, "never advise running the file's code"


@pytest.mark.parametrize(
    ("damage", "says"),
    [
        ("truncated-weights", "cannot be read"),
        ("meta-without-step", "meta.json is damaged"),
        ("meta-step-not-a-number", "meta.json is damaged"),
    ],
)
def test_a_damaged_backup_is_a_clear_error(tmp_path: Path, damage: str, says: str) -> None:
    import json

    path = _write(tmp_path, 5)
    if damage == "truncated-weights":
        weights = path / "trainable.safetensors"
        weights.write_bytes(weights.read_bytes()[:30])
    else:
        meta = json.loads((path / "meta.json").read_text())
        if damage == "meta-without-step":
            del meta["step"]
        else:
            meta["step"] = "three"
        (path / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(UserError, match=says) as error:
        read_backup(path)
    assert "another backup" in (error.value.hint or "")
