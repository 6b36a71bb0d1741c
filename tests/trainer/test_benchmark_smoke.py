"""The training-step benchmark runs at its smallest size and compares like with like."""

from __future__ import annotations

from benchmarks.training_step import run


def test_training_step_benchmark_trains_the_same_parameters_both_ways() -> None:
    rows = run(quick=True)
    assert len(rows) == 1
    row = rows[0]
    assert row.ours > 0
    assert row.reference > 0
    counts = row.details["trained_parameters"]
    assert counts["ours"] == counts["diffusers"] > 0
    assert row.ratio == row.ours / row.reference
