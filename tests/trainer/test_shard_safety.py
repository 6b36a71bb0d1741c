"""A sharded backup is read without running code from it: torch's `dcp.load` unpickles the shards' metadata and
their non-tensor values with no restriction, so both are checked first."""

from __future__ import annotations

import io
import os
import pickle
from pathlib import Path
from typing import Any

import pytest
import torch

from onetrainer.trainer.sharding import _checked_planner, check_shard_metadata
from onetrainer.util.errors import UserError


class _Touch:
    """Unpickles to a call that creates a file: what a hostile backup could do instead."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {self.marker}",))


def _shards(folder: Path) -> Path:
    import torch.distributed.checkpoint as dcp

    state = {"model": {"w": torch.randn(3, 4, dtype=torch.bfloat16)}, "optimizer": {"0": {"step": 3}}}
    dcp.save(state, checkpoint_id=folder)
    return folder


def test_metadata_torch_writes_passes(tmp_path: Path) -> None:
    check_shard_metadata(_shards(tmp_path / "shards"))


def test_metadata_that_would_run_code_is_refused_without_running_it(tmp_path: Path) -> None:
    folder = _shards(tmp_path / "shards")
    marker = tmp_path / "ran"
    (folder / ".metadata").write_bytes(pickle.dumps(_Touch(marker)))
    with pytest.raises(UserError, match="cannot be read as checkpoint metadata") as caught:
        check_shard_metadata(folder)
    assert "posix.system" in caught.value.message or "os.system" in caught.value.message
    assert not marker.exists()


def test_a_stored_value_that_would_run_code_is_refused(tmp_path: Path) -> None:
    from torch.distributed.checkpoint.metadata import MetadataIndex
    from torch.distributed.checkpoint.planner import LoadItemType, ReadItem

    marker = tmp_path / "ran"
    hostile = io.BytesIO()
    torch.save(_Touch(marker), hostile)
    hostile.seek(0)
    item = ReadItem(
        type=LoadItemType.BYTE_IO,
        dest_index=MetadataIndex("optimizer.0.step"),
        dest_offsets=torch.Size([]),
        storage_index=MetadataIndex("optimizer.0.step"),
        storage_offsets=torch.Size([]),
        lengths=torch.Size([]),
    )
    with pytest.raises(UserError, match="not plain data"):
        _checked_planner().load_bytes(item, hostile)
    assert not marker.exists()


def test_checkpoint_failures_come_out_as_our_errors(tmp_path: Path) -> None:
    """torch's `CheckpointException` derives from BaseException and wraps each rank's error in a traceback dump."""
    from torch.distributed.checkpoint.api import CheckpointException

    from onetrainer.trainer.sharding import _checkpoint_errors
    from onetrainer.util.errors import RuntimeFailure

    refused = UserError("a value in the sharded backup is not plain data")
    with pytest.raises(UserError) as caught, _checkpoint_errors("cannot load", tmp_path):
        raise CheckpointException("failed", {0: (refused, None)})
    assert caught.value is refused
    with (
        pytest.raises(RuntimeFailure, match="cannot load: OSError: disk full"),
        _checkpoint_errors("cannot load", tmp_path),
    ):
        raise CheckpointException("failed", {0: (OSError("disk full"), None), 1: (OSError("disk full"), None)})


def test_a_dotted_name_inside_an_allowed_module_is_refused(tmp_path: Path) -> None:
    """The unpickler resolves `os.system` inside the metadata module (which imports os): names are matched
    exactly."""
    import pickletools

    folder = _shards(tmp_path / "shards")
    marker = tmp_path / "ran"
    module, name = b"torch.distributed.checkpoint.metadata", b"os.system"
    command = f"touch {marker}".encode()
    payload = (
        b"\x80\x04"
        + b"\x8c" + bytes([len(module)]) + module + b"\x94"
        + b"\x8c" + bytes([len(name)]) + name + b"\x94"
        + b"\x93\x94"
        + b"\x8c" + bytes([len(command)]) + command + b"\x94"
        + b"\x85\x94R\x94."
    )  # fmt: skip
    pickletools.dis(payload, out=io.StringIO())  # a well-formed pickle
    (folder / ".metadata").write_bytes(payload)
    with pytest.raises(UserError, match="cannot be read as checkpoint metadata"):
        check_shard_metadata(folder)
    assert not marker.exists()
