"""Smoothed loss, throughput and the metrics.jsonl log (appended, truncated on resume)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from onetrainer.trainer.metrics import MetricsLog, SmoothedValue, Throughput, read_metrics


def test_smoothed_value_is_bias_corrected() -> None:
    smooth = SmoothedValue(beta=0.9)
    assert math.isnan(smooth.value)
    assert smooth.update(2.0) == pytest.approx(2.0)
    assert smooth.update(2.0) == pytest.approx(2.0)
    value = smooth.update(4.0)
    assert 2.0 < value < 4.0
    restored = SmoothedValue(beta=0.9)
    restored.load_state_dict(smooth.state_dict())
    assert restored.value == value


def test_throughput_counts_steps_per_second() -> None:
    now = [0.0]
    rate = Throughput(window=4, clock=lambda: now[0])
    for _ in range(6):
        rate.tick()
        now[0] += 0.5
    assert rate.steps_per_second == pytest.approx(2.0)
    rate.restart()
    assert rate.steps_per_second == 0.0


def test_throughput_counts_flops_per_second_over_the_window_when_every_step_was_counted() -> None:
    now = [0.0]
    rate = Throughput(window=2, clock=lambda: now[0])
    assert rate.flops_per_second is None
    for flops in (8.0, 1.0, 3.0):  # the first step's (a warm-up) drops out of the window
        rate.tick(flops)
        now[0] += 0.5
    assert rate.flops_per_second == pytest.approx(4.0)
    rate.tick(None)
    assert rate.flops_per_second is None


def test_metrics_log_appends_lines_and_truncates_after_a_step(tmp_path: Path) -> None:
    log = MetricsLog(tmp_path / "metrics.jsonl")
    for step in range(1, 6):
        log.append({"step": step, "loss": step / 10})
    with open(log.path, "a", encoding="utf-8") as handle:
        handle.write('{"step": 6, "lo')
    assert [record["step"] for record in read_metrics(log.path)] == [1, 2, 3, 4, 5]
    log.truncate_after(3)
    assert [record["step"] for record in read_metrics(log.path)] == [1, 2, 3]
    log.append({"step": 4, "loss": 0.0})
    assert read_metrics(log.path)[-1] == {"step": 4, "loss": 0.0}


def test_a_line_written_in_parts_arrives_whole_and_a_failed_one_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`os.write` may take part of a line (a full disk, a signal); a half line would swallow the next record."""
    import os

    log = MetricsLog(tmp_path / "metrics.jsonl")
    log.append({"step": 1, "loss": 0.5})
    real_write = os.write
    calls: list[int] = []

    def halves(fd: int, data: bytes) -> int:
        calls.append(len(data))
        return real_write(fd, data[: max(1, len(data) // 2)])

    monkeypatch.setattr(os, "write", halves)
    log.append({"step": 2, "loss": 0.25})
    assert len(calls) > 1

    def full_disk(fd: int, data: bytes) -> int:
        real_write(fd, data[:5])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "write", full_disk)
    with pytest.raises(OSError, match="No space"):
        log.append({"step": 3, "loss": 0.125})
    monkeypatch.setattr(os, "write", real_write)
    log.append({"step": 4, "loss": 0.0625})
    assert [record["step"] for record in read_metrics(tmp_path / "metrics.jsonl")] == [1, 2, 4]
