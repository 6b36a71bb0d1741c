"""The data-loader benchmark runs end to end at its smallest size and reports its ratios.

Marked slow: importing diffusers for the tiny VAE alone takes 3-10 s on two busy cores.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "data_loader.py"


@pytest.mark.slow
def test_benchmark_smallest_size(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    spec = importlib.util.spec_from_file_location("benchmark_data_loader", SCRIPT)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)
    spec.loader.exec_module(module)
    results = module.main(["--smallest"])
    printed = capsys.readouterr().out
    assert "waiting for data" in printed
    assert "faster" in printed
    assert 0 <= results["wait_share"] <= 1
    assert results["batches_per_second"] > 0
    assert results["speedup"] > 0
    assert results["batched_calls"] < results["per_sample_calls"]
