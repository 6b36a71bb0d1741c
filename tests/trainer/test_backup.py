"""Backups: exact round trip through weights_only loading, rolling deletion, and crash safety."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from onetrainer.trainer import backup as backup_module
from onetrainer.trainer.backup import (
    damaged_backups,
    find_backup,
    list_backups,
    prune_backups,
    read_backup,
    write_backup,
)
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


def test_torchaos_8_bit_optimizer_states_read_back_in_a_new_process(tmp_path: Path) -> None:
    """The states are torchao tensor subclasses, which `weights_only` rebuilds only once allowed; a resume is a
    new process that has not imported torchao yet (in this one, building the optimizer allowed them)."""
    pytest.importorskip("torchao")
    from torchao.optim import AdamW8bit

    weight = torch.nn.Parameter(torch.randn(64, 256))
    optimizer = AdamW8bit([weight])
    weight.grad = torch.randn_like(weight)
    optimizer.step()
    state = {"optimizer": optimizer.state_dict(), "rng": capture_rng_state(), "loop": {"step": 1}}
    path = write_backup(tmp_path, step=1, epoch=0, weights={}, state=state, config_yaml="step: 1\n")
    read = (
        "import sys; from pathlib import Path; from onetrainer.trainer.backup import read_backup; "
        "state = read_backup(Path(sys.argv[1])).state['optimizer']['state'][0]; "
        "print(type(state['exp_avg']).__name__, float(state['exp_avg'].dequantize().abs().sum()))"
    )
    result = subprocess.run([sys.executable, "-c", read, str(path)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    name, total = result.stdout.split()
    assert name == "OptimState8bit"
    assert float(total) == float(optimizer.state[weight]["exp_avg"].dequantize().abs().sum())


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


def _damage_meta(path: Path) -> Path:
    (path / "meta.json").write_text("{bad")
    return path


def test_resume_last_with_only_damaged_backups_says_they_are_damaged(tmp_path: Path) -> None:
    damaged = _damage_meta(_write(tmp_path, 4))
    with pytest.raises(UserError, match="every backup there is damaged") as error:
        find_backup(tmp_path, "last")
    assert "step-00000004, cannot be resumed: meta.json is damaged: it is not valid JSON" in error.value.message
    assert error.value.where == str(damaged / "meta.json")
    assert damaged_backups(tmp_path) == [(damaged, error.value.message.partition("cannot be resumed: ")[2])]


def test_a_damaged_backup_named_by_path_is_refused_as_damaged(tmp_path: Path) -> None:
    damaged = _damage_meta(_write(tmp_path, 4))
    with pytest.raises(UserError, match=r"meta\.json is damaged") as error:
        find_backup(tmp_path, damaged)
    assert "not a backup folder" not in error.value.message


def test_resume_last_refuses_a_damaged_newest_backup_naming_the_complete_one(tmp_path: Path) -> None:
    """Resuming the older one silently would drop the steps the damaged one held."""
    earlier = _write(tmp_path, 4)
    _damage_meta(_write(tmp_path, 8))
    with pytest.raises(UserError, match="newest backup step-00000008 cannot be resumed") as error:
        find_backup(tmp_path, "last")
    assert f"--resume {earlier}" in (error.value.hint or "")


def test_a_state_file_that_is_no_torch_archive_is_damaged_not_unsafe(tmp_path: Path) -> None:
    path = _write(tmp_path, 3)
    (path / "state.pt").write_text("garbage\n")
    with pytest.raises(UserError, match=r"state\.pt is damaged: it is not a PyTorch archive") as error:
        read_backup(path)
    assert error.value.where == str(path / "state.pt")
    assert "Python objects" not in error.value.message
    assert ".safetensors" not in (error.value.hint or "")


def test_a_new_run_is_refused_in_a_workspace_holding_only_damaged_backups(tmp_path: Path) -> None:
    from onetrainer.trainer.start import open_backup
    from onetrainer.trainer.workspace import Workspace
    from onetrainer.util.config.schema import TrainConfig

    _damage_meta(_write(tmp_path / "backups", 4))
    config = TrainConfig(model={"type": "sd15", "base": "org/model"}, saving={"output": str(tmp_path / "out")})
    with pytest.raises(UserError, match="already holds the backups of a run, damaged ones: step-00000004"):
        open_backup(config, Workspace(tmp_path), None)


def test_resuming_before_a_damaged_backup_moves_it_aside_with_the_later_steps(tmp_path: Path) -> None:
    """Left in place, the damaged backup would stop the resumed run's own `--resume last`."""
    from onetrainer.trainer.workspace import Workspace

    workspace = Workspace(tmp_path)
    earlier = _write(workspace.backups, 4)
    _damage_meta(_write(workspace.backups, 8))
    assert workspace.archive_steps_after(earlier) is not None
    assert find_backup(workspace.backups, "last") == earlier


def test_a_backup_being_pruned_is_set_aside_under_a_name_the_stale_sweep_knows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A second Ctrl-C while an old backup is deleted leaves it half deleted: the next run's sweep of stale
    temporaries (`remove_stale_temps`) must recognise it as one of ours."""
    from onetrainer.util.atomic import _TEMP_NAME

    for step in (1, 2):
        _write(tmp_path, step)
    aside: list[Path] = []
    monkeypatch.setattr(backup_module.shutil, "rmtree", lambda path, **_: aside.append(Path(path)))
    prune_backups(tmp_path, keep_last=1)
    assert aside[0].name.startswith(".step-00000001.")
    assert _TEMP_NAME.match(aside[0].name), aside[0].name
