"""Where a run writes is checked before anything loads, tidied of a killed run's temp files, and not
left behind by a run that fails while loading."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from onetrainer.trainer.loop import train
from onetrainer.trainer.parts import TrainingParts
from onetrainer.util.config.schema import TrainConfig
from onetrainer.util.errors import UserError

ToyConfig = Callable[..., TrainConfig]


def _never_built(*args: object, **kwargs: object) -> TrainingParts:
    raise AssertionError("the model was loaded although a check should have stopped the run first")


def test_a_workspace_that_is_a_file_is_refused_before_loading(tmp_path: Path, toy_config: ToyConfig) -> None:
    (tmp_path / "workspace").write_text("not a folder")
    with pytest.raises(UserError) as error:
        train(toy_config(tmp_path), build=_never_built)
    assert error.value.where == "workspace"
    assert f"{tmp_path / 'workspace'} is a file" in error.value.message


def test_a_workspace_under_a_file_is_refused_before_loading(tmp_path: Path, toy_config: ToyConfig) -> None:
    (tmp_path / "runs").write_text("not a folder")
    with pytest.raises(UserError) as error:
        train(toy_config(tmp_path, f"workspace={tmp_path / 'runs' / 'one'}"), build=_never_built)
    assert error.value.where == "workspace"
    assert f"{tmp_path / 'runs'} is a file, not a folder" in error.value.message


@pytest.mark.parametrize(
    ("output", "says"),
    [
        ("existing-folder.safetensors", "exists as a folder"),
        ("model.bin", "does not end in .safetensors"),
    ],
)
def test_an_output_that_cannot_be_written_is_refused_before_loading(
    tmp_path: Path, toy_config: ToyConfig, output: str, says: str
) -> None:
    (tmp_path / "existing-folder.safetensors").mkdir()
    with pytest.raises(UserError) as error:
        train(toy_config(tmp_path, f"saving.output={tmp_path / output}"), build=_never_built)
    assert error.value.where == "saving.output"
    assert says in error.value.message
    assert "saving.format" in error.value.hint


@pytest.mark.parametrize(
    ("output", "says"),
    [
        ("data", "would replace the images of data.concepts.0"),
        ("workspace", "would replace the workspace"),
        ("base", "holds what a diffusers model does not (keep.txt)"),
        ("notes", "holds what a diffusers model does not (keep.txt)"),
    ],
)
def test_a_full_model_output_that_would_delete_files_is_refused_before_loading(
    tmp_path: Path, toy_config: ToyConfig, output: str, says: str
) -> None:
    """A full fine-tune saved as a folder replaces the folder at every save: never the data, the workspace, or a
    folder with other files, the base model's folder included."""
    for name in ("data", "workspace", "base", "notes"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "keep.txt").write_text("mine")
    (tmp_path / "base" / "model_index.json").write_text("{}")
    config = toy_config(
        tmp_path,
        "method=full",
        f"model.base={tmp_path / 'base'}",
        f"data.concepts.0.path={tmp_path / 'data'}",
        f"saving.output={tmp_path / output}",
    )
    with pytest.raises(UserError) as error:
        train(config, build=_never_built)
    assert error.value.where == "saving.output"
    assert says in error.value.message
    assert all((tmp_path / name / "keep.txt").read_text() == "mine" for name in ("data", "workspace", "base", "notes"))


@pytest.mark.parametrize("key", ["workspace", "saving.output", "data.cache_dir"])
def test_an_unwritable_folder_is_refused_before_loading(
    tmp_path: Path, toy_config: ToyConfig, monkeypatch: pytest.MonkeyPatch, key: str
) -> None:
    read_only = tmp_path / "read-only"
    read_only.mkdir()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode: Path(path) != read_only and real_access(path, mode))
    target = read_only / ("out.safetensors" if key == "saving.output" else "folder")
    with pytest.raises(UserError) as error:
        train(toy_config(tmp_path, f"{key}={target}"), build=_never_built)
    assert error.value.where == key
    assert f"{read_only} is not writable" in error.value.message


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_folder_is_refused_before_loading(tmp_path: Path, toy_config: ToyConfig) -> None:
    read_only = tmp_path / "read-only"
    read_only.mkdir()
    read_only.chmod(0o555)
    try:
        with pytest.raises(UserError, match="is not writable"):
            train(toy_config(tmp_path, f"workspace={read_only / 'run'}"), build=_never_built)
    finally:
        read_only.chmod(0o755)


def test_a_run_that_fails_while_loading_leaves_no_new_folder(tmp_path: Path, toy_config: ToyConfig) -> None:
    def failing_load(config: TrainConfig, **kwargs: object) -> TrainingParts:
        (config.workspace / "cache").mkdir(parents=True, exist_ok=True)
        (config.workspace / "cache" / "files.json").write_text("{}")
        raise UserError("the model cannot be loaded")

    with pytest.raises(UserError, match="cannot be loaded"):
        train(toy_config(tmp_path, f"workspace={tmp_path / 'runs' / 'one'}"), build=failing_load)
    assert not (tmp_path / "runs").exists()

    existing = tmp_path / "existing"
    (existing / "cache").mkdir(parents=True)
    with pytest.raises(UserError, match="cannot be loaded"):
        train(toy_config(tmp_path, f"workspace={existing}"), build=failing_load)
    assert (existing / "cache" / "files.json").is_file()


def _killed_mid_write(*paths: Path) -> None:
    """Leave the temporary files a `kill -9` during these atomic writes would leave."""
    script = (
        "import os, signal, sys\n"
        "from contextlib import ExitStack\n"
        "from onetrainer.util.atomic import atomic_file\n"
        "with ExitStack() as stack:\n"
        "    for path in sys.argv[1:]:\n"
        "        stack.enter_context(atomic_file(path)).write(b'half')\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    killed = subprocess.run([sys.executable, "-c", script, *map(str, paths)], check=False)
    assert killed.returncode == -signal.SIGKILL


def _temporaries(root: Path) -> list[Path]:
    return [path for path in root.rglob(".*") if path.name.endswith(".tmp")]


def test_a_run_removes_the_temporary_files_a_killed_run_left(
    tmp_path: Path, toy_config: ToyConfig, toy_build: Callable[..., Callable[..., TrainingParts]]
) -> None:
    workspace, output = tmp_path / "workspace", tmp_path / "out" / "model.safetensors"
    _killed_mid_write(workspace / "cache" / "files.json", workspace / "metrics.jsonl", output)
    assert len(_temporaries(tmp_path)) == 3
    events: list[dict] = []
    train(toy_config(tmp_path), build=toy_build(), progress=events.append)
    assert _temporaries(tmp_path) == []
    assert any("removed 3 temporary file(s)" in event.get("message", "") for event in events)


def test_a_folder_where_no_file_can_be_created_is_refused_though_access_says_yes(
    tmp_path: Path, toy_config: ToyConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Root, read-only mounts and ACLs fool `os.access`: a file is created to find out."""
    import tempfile

    read_only = tmp_path / "read-only"
    read_only.mkdir()
    real_mkstemp = tempfile.mkstemp

    def mkstemp(*args: Any, dir: Any = None, **kwargs: Any) -> tuple[int, str]:
        if Path(dir) == read_only:
            raise PermissionError(13, "Read-only file system")
        return real_mkstemp(*args, dir=dir, **kwargs)

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)
    with pytest.raises(UserError, match="is not writable") as error:
        train(toy_config(tmp_path, f"saving.output={read_only / 'out.safetensors'}"), build=_never_built)
    assert error.value.where == "saving.output"


def test_a_second_run_in_a_workspace_in_use_is_refused_and_a_dead_runs_lock_taken_over(
    tmp_path: Path, toy_config: ToyConfig, toy_build: Callable[..., Callable[..., TrainingParts]]
) -> None:
    """Two runs at once would interleave their metrics, configs, TensorBoard logs and backups."""
    from onetrainer.util.atomic import process_tag

    workspace = tmp_path / "workspace"
    workspace.mkdir()
    lock = workspace / ".lock"
    lock.write_text(f"1@{process_tag().partition('@')[2]}")  # pid 1 (init) is alive on this machine
    with pytest.raises(UserError, match="in use by another run") as error:
        train(toy_config(tmp_path), build=_never_built)
    assert error.value.where == "workspace"
    gone = f"{2**22 + 12345}@{process_tag().partition('@')[2]}"  # above Linux's largest pid
    lock.write_text(gone)
    result = train(toy_config(tmp_path, "training.max_steps=1"), build=toy_build())
    assert result.step == 1
    assert not lock.exists(), "released at the end of the run"


def test_a_workspace_in_use_is_said_so_before_its_backups_are_judged(tmp_path: Path, toy_config: ToyConfig) -> None:
    """The live run's backups would send this one to `--resume` that run."""
    from onetrainer.util.atomic import process_tag

    backups = tmp_path / "workspace" / "backups" / "step-00000003"
    backups.mkdir(parents=True)
    (backups / "meta.json").write_text('{"format": 1, "step": 3, "epoch": 0}')
    (tmp_path / "workspace" / ".lock").write_text(f"1@{process_tag().partition('@')[2]}")
    with pytest.raises(UserError, match="in use by another run") as error:
        train(toy_config(tmp_path), build=_never_built)
    assert error.value.where == "workspace"


def test_a_file_to_start_from_of_the_wrong_kind_is_refused_before_loading(
    tmp_path: Path, toy_config: ToyConfig
) -> None:
    """An embedding given as `lora.init_from` (or an unreadable file) must not cost a model load to find."""
    import torch

    from onetrainer.util.atomic import save_safetensors

    embedding = tmp_path / "shape.safetensors"
    save_safetensors({"emb_params": torch.zeros(1, 768)}, embedding)
    with pytest.raises(UserError, match="is an embedding") as error:
        train(toy_config(tmp_path, "method=lora", f"lora.init_from={embedding}"), build=_never_built)
    assert error.value.where == "lora.init_from"
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(UserError) as error:
        train(toy_config(tmp_path, "method=lora", f"lora.init_from={corrupt}"), build=_never_built)
    assert "corrupt" in error.value.message.lower() or "header" in error.value.message.lower()


def test_a_run_refused_by_the_lock_leaves_the_workspace_it_found_missing(
    tmp_path: Path, toy_config: ToyConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two runs starting on a new workspace: the refused one must not delete what the other just created."""
    from onetrainer.trainer import workspace as workspace_module

    root = tmp_path / "workspace"
    real_lock = workspace_module.workspace_lock

    def taken_meanwhile(path: Path) -> Any:
        path.mkdir(parents=True, exist_ok=True)
        (path / "theirs.txt").write_text("the other run's file")
        (path / ".lock").write_text("1@elsewhere")
        return real_lock(path)

    monkeypatch.setattr("onetrainer.trainer.loop.workspace_lock", taken_meanwhile)
    with pytest.raises(UserError, match="in use by another run"):
        train(toy_config(tmp_path), build=_never_built)
    assert (root / "theirs.txt").is_file()
    assert (root / ".lock").read_text() == "1@elsewhere"


def test_a_lock_naming_this_very_process_or_being_written_is_judged_so() -> None:
    from onetrainer.trainer.workspace import _held
    from onetrainer.util.atomic import process_tag

    assert not _held(process_tag(), 3600, process_tag()), "an earlier run that had this pid (a restarted container)"
    assert _held("", 1, process_tag()), "being written by a run starting now"
    assert not _held("", 60, process_tag()), "an empty lock left by a crash"
