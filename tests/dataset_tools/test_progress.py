"""The folder tools' summary: counts and the images/s speed line."""

from __future__ import annotations

from pathlib import Path

from onetrainer.dataset_tools.progress import ToolSummary


def test_summary_rows_count_and_give_images_per_second() -> None:
    summary = ToolSummary(
        found=5,
        written=[Path("a.txt"), Path("b.txt"), Path("c.txt")],
        kept=[Path("d.txt")],
        failed=[(Path("e.png"), "truncated")],
        processed=4,
        seconds=2.0,
    )
    assert summary.images_per_second == 2.0
    assert summary.count_rows(written="captions written", kept="captions kept") == [
        ("images found", "5"),
        ("captions written", "3"),
        ("captions kept", "1"),
        ("skipped", "1"),
        ("speed", "2.00 images/s (2.0 s)"),
    ]


def test_a_run_that_handled_nothing_has_no_speed_line() -> None:
    summary = ToolSummary(found=2, kept=[Path("a.txt"), Path("b.txt")], seconds=0.0)
    assert summary.images_per_second == 0.0
    assert [label for label, _ in summary.count_rows(written="w", kept="k")] == [
        "images found",
        "w",
        "k",
        "skipped",
    ]
