"""The training-step benchmark runs at its smallest size and compares like with like."""

from __future__ import annotations

import pytest

from benchmarks.training_step import run


@pytest.mark.slow
def test_training_step_benchmark_trains_the_same_parameters_every_way() -> None:
    rows = run(quick=True)
    assert [row.reference_label for row in rows] == ["diffusers loop", "same setup, no loop"]
    for row in rows:
        assert row.ours > 0
        assert row.reference > 0
        assert row.ratio == row.ours / row.reference
    counts = rows[0].details["trained_parameters"]
    assert counts["loop"] == counts["by hand"] == counts["diffusers"] > 0
