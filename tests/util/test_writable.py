"""`check_writable`, `check_output_file`: a path that cannot be written is refused before the work that fills it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from onetrainer.util.errors import UserError
from onetrainer.util.writable import check_output_file, check_writable


def test_a_writable_place_passes_and_leaves_nothing_behind(tmp_path: Path) -> None:
    check_writable(tmp_path / "new" / "deeper" / "out.png")
    check_writable(tmp_path / "out.png")
    assert list(tmp_path.iterdir()) == []


def test_a_file_where_a_folder_is_needed_is_refused(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="is a file, not a folder") as caught:
        check_writable(tmp_path / "file" / "sub" / "out.png", where="--output")
    assert caught.value.where == "--output"


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_folder_is_refused(tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        with pytest.raises(UserError, match=f"cannot write into {locked}"):
            check_writable(locked / "sub" / "out.png")
    finally:
        locked.chmod(0o755)


def test_an_output_file_is_refused_where_a_folder_stands_even_with_overwrite(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="the output is a folder, not a file") as caught:
        check_output_file(tmp_path, overwrite=True, where="--output")
    assert caught.value.where == "--output"


def test_an_existing_output_file_is_replaced_only_with_overwrite(tmp_path: Path) -> None:
    existing = tmp_path / "out.json"
    existing.write_text("{}")
    with pytest.raises(UserError, match="the output exists") as caught:
        check_output_file(existing, overwrite=False)
    assert "--overwrite" in (caught.value.hint or "")
    check_output_file(existing, overwrite=True)
    check_output_file(tmp_path / "new" / "out.json", overwrite=False)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["out.json"]
