import os
import signal
import stat
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from onetrainer.util.atomic import (
    atomic_directory,
    atomic_file,
    atomic_write_text,
    remove_stale_temps,
    save_safetensors,
)


def test_atomic_write_replaces_content(tmp_path):
    target = tmp_path / "sub" / "file.txt"
    atomic_write_text(target, "first")
    atomic_write_text(target, "second")
    assert target.read_text() == "second"
    assert [p.name for p in target.parent.iterdir()] == ["file.txt"]


def test_failed_write_keeps_previous_file_and_leaves_no_temp(tmp_path):
    target = tmp_path / "model.bin"
    target.write_bytes(b"good")
    with pytest.raises(RuntimeError), atomic_file(target) as handle:
        handle.write(b"half")
        raise RuntimeError("crash mid-write")
    assert target.read_bytes() == b"good"
    assert [p.name for p in tmp_path.iterdir()] == ["model.bin"]


def test_written_files_follow_umask_not_tempfile_private_mode(tmp_path):
    target = tmp_path / "out.txt"
    atomic_write_text(target, "x")
    mode = stat.S_IMODE(target.stat().st_mode)
    umask = os.umask(0)
    os.umask(umask)
    assert mode == 0o666 & ~umask


def test_atomic_directory_swaps_whole_folder(tmp_path):
    target = tmp_path / "model"
    with atomic_directory(target) as tmp:
        (tmp / "a.txt").write_text("old")
    with pytest.raises(FileExistsError), atomic_directory(target):
        pass
    with pytest.raises(RuntimeError), atomic_directory(target, overwrite=True) as tmp:
        (tmp / "b.txt").write_text("new")
        raise RuntimeError("crash")
    assert sorted(p.name for p in target.iterdir()) == ["a.txt"]
    with atomic_directory(target, overwrite=True) as tmp:
        (tmp / "b.txt").write_text("new")
    assert sorted(p.name for p in target.iterdir()) == ["b.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_save_safetensors_round_trip_with_metadata(tmp_path):
    target = tmp_path / "w.safetensors"
    tensors = {"a": torch.arange(6.0).reshape(2, 3).t(), "b": torch.ones(2, dtype=torch.float16)}
    save_safetensors(tensors, target, {"modelspec.title": "x"})
    loaded = load_file(target)
    assert torch.equal(loaded["a"], tensors["a"])
    assert loaded["b"].dtype == torch.float16


# ------------------------------------------------------------ interrupts, errors and leftovers


def _interrupt_after(monkeypatch, name):
    """Make `os.<name>` (open or mkdir) raise KeyboardInterrupt right after it created a temporary name."""
    real = getattr(os, name)

    def created_then_interrupted(path, *args, **kwargs):
        result = real(path, *args, **kwargs)
        if os.fsdecode(path).endswith(".tmp"):
            raise KeyboardInterrupt
        return result

    monkeypatch.setattr(os, name, created_then_interrupted)


@pytest.mark.parametrize(
    ("name", "write"),
    [
        ("open", lambda target: atomic_write_text(target, "x")),
        ("open", lambda target: save_safetensors({"a": torch.ones(1)}, target)),
        ("mkdir", lambda target: atomic_directory(target).__enter__()),
    ],
    ids=["atomic_file", "atomic_path", "atomic_directory"],
)
def test_an_interrupt_right_after_the_temporary_is_created_leaves_nothing(tmp_path, monkeypatch, name, write):
    _interrupt_after(monkeypatch, name)
    with pytest.raises(KeyboardInterrupt):
        write(tmp_path / "target")
    monkeypatch.undo()
    assert list(tmp_path.iterdir()) == []


def test_an_interrupt_between_the_two_renames_puts_the_old_folder_back(tmp_path, monkeypatch):
    target = tmp_path / "model"
    with atomic_directory(target) as tmp:
        (tmp / "a.txt").write_text("old")
    real = os.replace
    calls = []

    def second_rename_interrupted(source, destination):
        calls.append(source)
        if len(calls) == 2:
            raise KeyboardInterrupt
        real(source, destination)

    monkeypatch.setattr(os, "replace", second_rename_interrupted)
    with pytest.raises(KeyboardInterrupt), atomic_directory(target, overwrite=True) as tmp:
        (tmp / "b.txt").write_text("new")
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
    assert sorted(p.name for p in target.iterdir()) == ["a.txt"]


def test_write_errors_name_the_target_not_the_temporary_file(tmp_path):
    folder = tmp_path / "taken"
    folder.mkdir()
    for write in (lambda: atomic_write_text(folder, "x"), lambda: save_safetensors({"a": torch.ones(1)}, folder)):
        with pytest.raises(IsADirectoryError) as error:
            write()
        assert error.value.filename == str(folder)
        assert ".tmp" not in str(error.value)
    with pytest.raises(FileNotFoundError) as error, atomic_directory(tmp_path / "model") as tmp:
        (tmp / "missing" / "config.json").read_text()
    assert error.value.filename == str(tmp_path / "model" / "missing" / "config.json")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]


_KILLED_MID_WRITE = """
import os, signal, sys
from onetrainer.util.atomic import atomic_directory, atomic_file
with atomic_file(sys.argv[1]) as handle, atomic_directory(sys.argv[2]) as folder:
    handle.write(b"half")
    (folder / "part").write_text("half")
    os.kill(os.getpid(), signal.SIGKILL)
"""


def test_stale_temporaries_of_killed_writers_are_removed_and_nothing_else(tmp_path):
    nested = tmp_path / "cache" / "image" / "ab"
    nested.mkdir(parents=True)
    killed = subprocess.run(
        [sys.executable, "-c", _KILLED_MID_WRITE, str(nested / "entry.safetensors"), str(tmp_path / "model")],
        check=False,
    )
    assert killed.returncode == -signal.SIGKILL
    [killed_folder] = [p.name for p in tmp_path.iterdir() if p.name.startswith(".model.")]
    [killed_file] = [p.name for p in nested.iterdir() if p.name.startswith(".entry.safetensors.")]
    (tmp_path / ".notes.tmp").write_text("a user's file")
    old = tmp_path / ".metrics.jsonl.123@0badf00d.0123abcd.tmp"
    old.write_text("another host's, untouched for two days")
    os.utime(old, (time.time() - 2 * 86400,) * 2)
    recent = tmp_path / ".metrics.jsonl.123@0badf00d.89abcdef.tmp"
    recent.write_text("another host's, being written")

    with atomic_file(tmp_path / "live.txt") as handle:
        handle.write(b"in progress")
        removed = remove_stale_temps(tmp_path)
        assert sorted(p.name for p in removed) == sorted([old.name, killed_folder])
        assert any(p.name.startswith(".live.txt.") for p in tmp_path.iterdir())
    assert [p.name for p in remove_stale_temps(tmp_path, recursive=True)] == [killed_file]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([".notes.tmp", recent.name, "cache", "live.txt"])
    assert list(nested.iterdir()) == []


def test_a_write_into_a_file_instead_of_a_folder_fails_naming_the_target(tmp_path):
    """Removing the temporary fails the same way; that must not replace the error, nor name the temporary."""
    (tmp_path / "existing.png").write_bytes(b"png")
    target = tmp_path / "existing.png" / "x.json"
    with pytest.raises(OSError, match=r"existing\.png") as caught:
        atomic_write_text(target, "{}")
    assert ".tmp" not in str(caught.value)
