"""Training metrics: a smoothed loss, steps and FLOPs per second, and the workspace's `metrics.jsonl` log.

`metrics.jsonl` is a log, so it is appended, one JSON object per line, each line written by a single
`write` on an `O_APPEND` descriptor; a hard kill can cut at most the last line, which `read_metrics`
skips. When a run resumes, the lines after the backup's step are dropped (by an atomic rewrite) so the
log shows each step once.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

from onetrainer.util.atomic import atomic_write_text


class SmoothedValue:
    """Exponential moving average with bias correction, so the first values are not pulled toward 0."""

    def __init__(self, beta: float = 0.98) -> None:
        self.beta = beta
        self._average = 0.0
        self._count = 0

    def update(self, value: float) -> float:
        self._count += 1
        self._average = self.beta * self._average + (1.0 - self.beta) * value
        return self.value

    @property
    def value(self) -> float:
        if self._count == 0:
            return math.nan
        return self._average / (1.0 - self.beta**self._count)

    def state_dict(self) -> dict[str, Any]:
        return {"average": self._average, "count": self._count}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._average = float(state["average"])
        self._count = int(state["count"])


class Throughput:
    """Steps and FLOPs per second over the last `window` steps (the first step, with its warm-up, drops out)."""

    def __init__(self, window: int = 20, *, clock: Callable[[], float] = time.perf_counter) -> None:
        self._clock = clock
        self._times: deque[float] = deque(maxlen=window + 1)
        self._flops: deque[float | None] = deque(maxlen=window + 1)

    def tick(self, flops: float | None = None) -> None:
        """A step ended now; `flops` it computed, if counted."""
        self._times.append(self._clock())
        self._flops.append(flops)

    def restart(self) -> None:
        """Forget the history, after a pause (previews, a backup) that would distort the rate."""
        self._times.clear()
        self._flops.clear()
        self.tick()

    @property
    def steps_per_second(self) -> float:
        if len(self._times) < 2:
            return 0.0
        elapsed = self._times[-1] - self._times[0]
        return (len(self._times) - 1) / elapsed if elapsed > 0 else 0.0

    @property
    def flops_per_second(self) -> float | None:
        """The FLOPs of the steps in the window over its time; None unless every one of them was counted."""
        done = list(self._flops)[1:]
        elapsed = self._times[-1] - self._times[0] if len(self._times) > 1 else 0.0
        if not done or elapsed <= 0 or any(flops is None for flops in done):
            return None
        return sum(flops for flops in done if flops is not None) / elapsed


class MetricsLog:
    def __init__(self, path: Path) -> None:
        self.path = path

    def append(self, record: dict[str, Any]) -> None:
        line = json.dumps(record, separators=(",", ":"), allow_nan=True) + "\n"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        data = line.encode("utf-8")
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
        try:
            start = os.fstat(fd).st_size
            try:
                written = 0
                while written < len(data):  # a write may take part of the line (a full disk, a signal)
                    written += os.write(fd, data[written:])
            except BaseException:
                os.ftruncate(fd, start)  # no half line to run into the next record
                raise
        finally:
            os.close(fd)

    def truncate_after(self, step: int) -> None:
        """Drop the records of steps after `step` (and any cut-off last line)."""
        if not self.path.exists():
            return
        kept = [record for record in read_metrics(self.path) if int(record.get("step", 0)) <= step]
        atomic_write_text(self.path, "".join(json.dumps(record, separators=(",", ":")) + "\n" for record in kept))


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """Every complete record of a metrics log; an unparseable (cut-off) line is skipped."""
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records
