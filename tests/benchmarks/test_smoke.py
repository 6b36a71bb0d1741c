"""The benchmarks still run at their smallest sizes, and each compares like with like.

Nothing here checks a time: the benchmarks measure, they do not judge. What is checked is that each
one produces its rows, that a ratio is the ratio of its two numbers, and the facts that make a
comparison fair (the same image from both samplers, a lossless round trip, the same trained
parameters on both sides of the GPU step).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.__main__ import BENCHMARKS
from benchmarks.common import Row, markdown_table, paired_times, write_results
from benchmarks.gpu.memory import memory_presets
from benchmarks.gpu.wheels import missing

REPO = Path(__file__).resolve().parents[2]
SD35 = ("SD3.5-medium", "SD3.5-large")


def _run_module(*arguments: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *arguments],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        timeout=900,
        check=False,
    )


def test_ratio_is_ours_over_reference() -> None:
    row = Row("b", "c", ours=3.0, reference=2.0, unit="s")
    assert row.ratio == 1.5
    assert row.to_json()["ratio"] == 1.5


def test_paired_times_alternate_the_two_sides_after_warm_up() -> None:
    calls: list[str] = []
    ours, reference = paired_times(lambda: calls.append("o"), lambda: calls.append("r"), repeats=3, warmup=2)
    assert calls == ["o", "r"] * 5
    assert ours.repeats == reference.repeats == 3
    assert ours.low <= ours.median <= ours.high


def test_results_file_holds_machine_rows_and_ratios(tmp_path: Path) -> None:
    rows = [
        Row("a", "one", 1.0, 4.0, "s", details={"x": 1}),
        Row("b", "two", 2.0, 1.0, "MiB", ours_label="peak", reference_label="unet"),
    ]
    path = tmp_path / "results.json"
    write_results(path, rows, {"cpu": "test"}, quick=True)
    document = json.loads(path.read_text(encoding="utf-8"))
    assert document["machine"] == {"cpu": "test"}
    assert [row["ratio"] for row in document["rows"]] == [0.25, 2.0]
    assert document["rows"][1]["details"] == {}
    assert document["rows"][0]["details"] == {"x": 1}
    table = markdown_table(rows).splitlines()
    assert len(table) == 2 + len(rows)
    assert table[2].endswith("| 0.25× |")


def test_carried_wheels_are_installed_when_missing_or_at_another_version(tmp_path: Path) -> None:
    from importlib import metadata

    (tmp_path / f"pytest-{metadata.version('pytest')}-py3-none-any.whl").write_bytes(b"")
    other_version = tmp_path / "PyYAML-0.0.1-py3-none-any.whl"
    absent = tmp_path / "surely_not_installed_pkg-1.0-py3-none-any.whl"
    for wheel in (other_version, absent):
        wheel.write_bytes(b"")
    assert missing(tmp_path) == [other_version, absent]


def _check_rows(rows: list[dict], name: str) -> None:
    assert rows, f"{name} produced no rows"
    for row in rows:
        assert row["ours"] > 0, row
        assert row["reference"] > 0, row
        assert row["ratio"] == pytest.approx(row["ours"] / row["reference"])


@pytest.mark.slow
@pytest.mark.parametrize("name", BENCHMARKS)
def test_benchmark_runs_at_smallest_size(name: str, tmp_path: Path) -> None:
    out, table = tmp_path / "results.json", tmp_path / "table.md"
    done = _run_module("benchmarks", "--quick", "--only", name, "--out", str(out), "--markdown", str(table))
    assert done.returncode == 0, done.stderr[-4000:]
    rows = json.loads(out.read_text(encoding="utf-8"))["rows"]
    _check_rows(rows, name)
    assert len(table.read_text(encoding="utf-8").splitlines()) == 4 + len(rows)
    if name == "startup":
        app = next(row for row in rows if row["case"] == "import onetrainer.commands.app")
        assert app["details"]["heavy_modules_loaded"] == []
    if name == "sampling":
        assert all(row["details"]["max_pixel_difference"] == 0 for row in rows)
    if name == "convert":
        assert rows[0]["details"]["round_trip_identical"] is True
        assert sum("peak RSS" in row["case"] for row in rows) == 3
    if name == "loading":
        import torch

        gpu = ["UNet nf4 quantised on the GPU"] * 2 if torch.cuda.is_available() else []
        assert [row["ours_label"] for row in rows] == ["UNet fp8", "UNet fp8", "UNet nf4", "UNet nf4", *gpu]


def test_gpu_script_takes_one_cpu_mode_and_needs_cuda_without_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    from benchmarks.gpu.__main__ import main

    with pytest.raises(SystemExit) as both:
        main([str(tmp_path), "--dry-run", "--cpu-real-size"])
    assert both.value.code == 2
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # a machine without CUDA, GPU or not
    assert main([str(tmp_path)]) == 2
    assert not (tmp_path / "gpu.json").exists()


@pytest.mark.parametrize("family", ["FLUX.1-dev", "SD3.5-large"])
def test_gpu_cpu_real_size_skips_transformers_too_big_for_cpu_memory(
    family: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from benchmarks.gpu.__main__ import main
    from onetrainer.model_setup.compile import CACHE_VARIABLE

    monkeypatch.delenv(CACHE_VARIABLE, raising=False)  # main points inductor's cache for its process
    assert main([str(tmp_path), "--cpu-real-size", "--family", family]) == 0
    cases = json.loads((tmp_path / "gpu.json").read_text(encoding="utf-8"))["cases"]
    assert cases, family
    assert all(case["family"] == family and "not on a CPU run" in case["skipped"] for case in cases)


@pytest.mark.parametrize("only", ["speed", "memory"])
def test_gpu_script_measures_the_speed_cases_or_the_memory_presets_alone(
    only: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One H200 lease measures about one of the two; FLUX.1 is skipped on the CPU, so this measures nothing."""
    from benchmarks.gpu.__main__ import main
    from onetrainer.model_setup.compile import CACHE_VARIABLE

    monkeypatch.delenv(CACHE_VARIABLE, raising=False)
    assert main([str(tmp_path), "--cpu-real-size", "--family", "FLUX.1-dev", "--only", only]) == 0
    cases = json.loads((tmp_path / "gpu.json").read_text(encoding="utf-8"))["cases"]
    presets = {case["preset"] for case in cases}
    if only == "memory":
        assert presets == set(memory_presets("FLUX.1-dev"))
        estimates = {case["preset"]: case["estimate_gib"] for case in cases}
        assert estimates["flux-dev-lora-8gb"] < estimates["flux-dev-lora-12gb"] < estimates["flux-dev-full-24gb"]
    else:
        assert presets == {None}


@pytest.mark.slow
def test_gpu_script_dry_run_trains_the_same_parameters_both_ways(tmp_path: Path) -> None:
    done = _run_module("benchmarks.gpu", str(tmp_path), "--dry-run")
    assert done.returncode == 0, done.stderr[-4000:]
    document = json.loads((tmp_path / "gpu.json").read_text(encoding="utf-8"))
    cases = document["cases"]
    plain = [c for c in cases if c["preset"] is None]
    assert {(c["family"], c["method"], c["checkpointing"], c["compile"]) for c in plain} == {
        (family, method, checkpointing, compiled)
        for family in ("SD1.5", "SDXL", "FLUX.1-dev")
        for method in ("lora", "full")
        for checkpointing in (False, True)
        for compiled in (False, True)
        if (method == "lora" or family != "FLUX.1-dev") and not (compiled and checkpointing)
    } | {(family, "lora", True, False) for family in SD35}  # SD 3.5 as its presets train it
    assert any(c["channels_last"] for c in plain)
    families = ("SD1.5", "SDXL", "FLUX.1-dev", *SD35)
    assert {c["preset"] for c in cases} - {None} == {name for family in families for name in memory_presets(family)}
    for case in cases:
        bare, ours = case["diffusers"], case["ours"]
        if (case["family"], case["method"]) == ("FLUX.1-dev", "full"):  # a memory preset; no bare reference
            assert ours["steps_per_second"] > 0, (case["case"], ours)
            assert "LoRA only" in bare["unavailable"]
            continue
        assert bare["steps_per_second"] > 0
        assert ours["steps_per_second"] > 0, (case["case"], ours)
        assert ours["trainable_parameters"] == bare["trainable_parameters"], case["case"]
        if not _nf4(case["preset"]):  # torch's FLOP counter does not see bitsandbytes' 4-bit matmuls
            assert ours["tflop_per_step"] == bare["tflop_per_step"] > 0, case["case"]  # the same model work
    _check_rows(document["rows"], "gpu")
    assert len((tmp_path / "gpu.md").read_text(encoding="utf-8").splitlines()) >= 2 + 2 + len(cases)


def test_the_gpu_script_runs_the_gpu_marked_tests(tmp_path: Path) -> None:
    """`run.sh --tests`: the CUDA-only paths' tests in the GPU image (skipped here without CUDA)."""
    import torch

    done = subprocess.run(
        ["bash", "benchmarks/gpu/run.sh", "--tests"],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHON": sys.executable, "BENCHMARK_SITE": str(tmp_path / "site")},
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    outcome = "passed" if torch.cuda.is_available() else "skipped"
    assert f" {outcome}" in done.stdout
    assert "deselected" in done.stdout, "only the gpu-marked tests run"


def test_an_estimate_worker_that_died_is_recorded_and_the_run_goes_on() -> None:
    from concurrent.futures import Future
    from concurrent.futures.process import BrokenProcessPool

    from benchmarks.gpu.memory import add_estimates

    done, broken, running = Future(), Future(), Future()
    done.set_result({"estimate_gib": 4.5})
    broken.set_exception(BrokenProcessPool("a child process terminated abruptly"))
    results = [{"preset": "a"}, {"preset": "b"}, {"preset": "c"}, {"preset": None}]
    add_estimates(results, {"a": done, "b": broken, "c": running})
    assert results[0] == {"preset": "a", "estimate_gib": 4.5}
    assert "BrokenProcessPool" in results[1]["estimate_error"]
    assert results[2] == {"preset": "c"}, "an estimate still running is added at a later report"
    assert results[3] == {"preset": None}


def _nf4(preset: str | None) -> bool:
    from onetrainer.util.config.presets import load_preset

    parts = load_preset(preset).get("parts", {}) if preset else {}
    return any(part.get("weight_dtype") == "nf4" for part in parts.values())


def test_gpu_table_shows_the_utilisation_beside_the_speed_and_the_warm_up() -> None:
    from benchmarks.gpu.report import markdown, rows_of

    measured = {"trainable_parameters": 1, "last_loss": 0.1, "tflop_per_step": 2.41, "peak_vram_gib": 5.0}
    ours = {**measured, "steps_per_second": 9.41, "mfu": 0.0229, "tflop_per_second": 22.7, "warmup_seconds": 95.0}
    bare = {**measured, "steps_per_second": 6.91, "mfu": 0.0168, "tflop_per_second": 16.7, "warmup_seconds": 12.0}
    entry = {"case": "SD1.5 512 px LoRA, GC off, batch 1, compiled", "ours": ours, "diffusers": bare}
    table = markdown([entry, {"case": "SDXL 512 px full, GC on, batch 1", "skipped": "time budget of 420 s spent"}])
    assert "| 9.41 (2.3%) | 6.91 (1.7%) | 1.36× | 5.00 GiB | 5.00 GiB | 1.00× | 95.0 / 12.0 s |" in table
    assert "| SDXL 512 px full, GC on, batch 1 | skipped |" in table
    preset = {**entry, "case": "preset sdxl-lora-6gb: SDXL", "estimate_gib": 4.712}
    assert "| 9.41 (2.3%) | 6.91 (1.7%) | 1.36× | 5.00 GiB (est. 4.71) | 5.00 GiB |" in markdown([preset])
    assert rows_of([preset])[-1].details["dry_run_estimate_gib"] == 4.712
    without_peak = {key: value for key, value in ours.items() if key != "mfu"}
    assert "9.41 (22.7 TFLOP/s)" in markdown([{**entry, "ours": without_peak}])
    assert [row.benchmark for row in rows_of([entry])] == [
        "gpu training step",
        "gpu model FLOP utilisation",
        "gpu peak VRAM",
    ]
