"""What every benchmark shares: timing, the row format, the machine description, the table and the JSON.

A benchmark's result is a ratio of two things measured in the same run, on the same machine, under the
same load: absolute seconds move by tens of percent between runs on a shared two-core machine, while
the ratio of two interleaved measurements stays put. Timings are medians of several repeats taken
after warm-up, alternating between the two sides so a slow patch of the machine hits both.

Each benchmark module exposes `run(quick: bool) -> list[Row]`; `quick` is the smallest size, which the
smoke test runs so the benchmarks cannot rot.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

PACKAGES = ("onetrainer", "torch", "diffusers", "transformers", "peft", "safetensors")
"""Versions recorded with every result, since each of them moves the numbers."""


@dataclass(frozen=True)
class Row:
    """One line of the table: `ours` against `reference`, both in `unit`, measured in the same run."""

    benchmark: str
    case: str
    ours: float
    reference: float
    unit: str
    ours_label: str = "ours"
    reference_label: str = "reference"
    repeats: int = 1
    details: Mapping[str, Any] = field(default_factory=dict)
    """Anything else worth keeping in the JSON: spreads, sizes, equality checks."""

    @property
    def ratio(self) -> float:
        return self.ours / self.reference if self.reference else float("inf")

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "details": dict(self.details), "ratio": self.ratio}


@dataclass(frozen=True)
class Timing:
    """Median and spread of one side's repeats, in seconds."""

    median: float
    low: float
    high: float
    repeats: int

    @classmethod
    def of(cls, samples: Sequence[float]) -> Timing:
        return cls(statistics.median(samples), min(samples), max(samples), len(samples))

    def spread(self) -> dict[str, float]:
        return {"min_s": self.low, "max_s": self.high}


def time_once(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def median_time(fn: Callable[[], object], *, repeats: int, warmup: int = 1) -> Timing:
    """Seconds per call of `fn`: `warmup` untimed calls (caches, allocators, lazy init), then `repeats`."""
    for _ in range(warmup):
        fn()
    return Timing.of([time_once(fn) for _ in range(max(repeats, 1))])


def paired_times(
    ours: Callable[[], object], reference: Callable[[], object], *, repeats: int, warmup: int = 1
) -> tuple[Timing, Timing]:
    """Both sides timed alternately (ours, reference, ours, ...) after each has warmed up."""
    for _ in range(warmup):
        ours()
        reference()
    samples: tuple[list[float], list[float]] = ([], [])
    for _ in range(max(repeats, 1)):
        samples[0].append(time_once(ours))
        samples[1].append(time_once(reference))
    return Timing.of(samples[0]), Timing.of(samples[1])


def timed_row(
    benchmark: str,
    case: str,
    ours: Timing,
    reference: Timing,
    *,
    ours_label: str = "ours",
    reference_label: str = "reference",
    details: Mapping[str, Any] | None = None,
) -> Row:
    return Row(
        benchmark,
        case,
        ours.median,
        reference.median,
        "s",
        ours_label=ours_label,
        reference_label=reference_label,
        repeats=ours.repeats,
        details={"ours": ours.spread(), "reference": reference.spread(), **(details or {})},
    )


MID_UNET: dict[str, Any] = {
    "block_out_channels": (64, 128, 256, 256),
    "layers_per_block": 2,
    "down_block_types": ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    "attention_head_dim": 8,
    "norm_num_groups": 32,
}
"""SD 1.5's UNet layout (four levels, two layers each, attention on three) at a fifth of its width:
about 34 M parameters, big enough that the denoiser, not Python overhead, dominates a step on a CPU."""


def build_mid_unet(*, cross_attention_dim: int, sample_size: int = 32, seed: int = 0) -> Any:
    """The `MID_UNET` denoiser with reproducible random weights, leaving the caller's RNG alone."""
    import torch
    from diffusers import UNet2DConditionModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return UNet2DConditionModel(
            sample_size=sample_size, in_channels=4, out_channels=4, cross_attention_dim=cross_attention_dim, **MID_UNET
        )


def machine() -> dict[str, Any]:
    """The machine and software a result was measured on, for the README's "date and machine" line."""
    info: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu": _cpu_name(),
        "cpus": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "memory_gib": _memory_gib(),
        "packages": {name: _version(name) for name in PACKAGES},
    }
    if "torch" in sys.modules:
        torch = sys.modules["torch"]
        info["torch_threads"] = torch.get_num_threads()
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
            info["cuda"] = torch.version.cuda
    return info


def _cpu_name() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def _memory_gib() -> float | None:
    meminfo = Path("/proc/meminfo")
    if not meminfo.exists():
        return None
    for line in meminfo.read_text(encoding="utf-8").splitlines():
        if line.startswith("MemTotal:"):
            return round(int(line.split()[1]) / 2**20, 1)
    return None


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def format_value(value: float, unit: str) -> str:
    if unit == "s":
        return f"{value * 1000:.1f} ms" if value < 1 else f"{value:.2f} s"
    if unit == "MiB" and value >= 1024:
        return f"{value / 1024:.2f} GiB"
    return f"{value:.3g} {unit}"


def format_ratio(ratio: float) -> str:
    return f"{ratio:.2f}×" if ratio < 100 else f"{ratio:.0f}×"


def _labelled(label: str, value: float, unit: str, plain: str) -> str:
    text = format_value(value, unit)
    return text if label == plain else f"{label}: {text}"


def table_cells(row: Row) -> list[str]:
    return [
        row.benchmark,
        row.case,
        _labelled(row.ours_label, row.ours, row.unit, "ours"),
        _labelled(row.reference_label, row.reference, row.unit, ""),
        format_ratio(row.ratio),
    ]


HEADERS = ("benchmark", "case", "ours", "reference", "ours / reference")


def rich_table(rows: Iterable[Row], title: str) -> Any:
    from rich.table import Table

    table = Table(title=title, title_justify="left", show_lines=False)
    for header in HEADERS:
        table.add_column(header, justify="right" if header == HEADERS[-1] else "left")
    for row in rows:
        table.add_row(*table_cells(row))
    return table


def markdown_table(rows: Iterable[Row]) -> str:
    """The table as GitHub markdown, for the README's Performance section."""
    lines = ["| " + " | ".join(HEADERS) + " |", "|" + "---|" * (len(HEADERS) - 1) + "---:|"]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in table_cells(row)) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def machine_line(info: Mapping[str, Any]) -> str:
    """One line naming date, processor and software, to print above a table."""
    packages = info.get("packages", {})
    software = ", ".join(f"{name} {version}" for name, version in packages.items() if version)
    device = info.get("gpu") or f"{info.get('cpu')} ({info.get('cpus_usable')} cores usable)"
    date = str(info.get("date", ""))[:10]
    return f"{date} · {device} · {info.get('memory_gib')} GiB · Python {info.get('python')} · {software}"


def write_results(path: Path, rows: Sequence[Row], info: Mapping[str, Any], **extra: Any) -> None:
    """The JSON file every run leaves behind: machine, rows (with their ratio) and anything else."""
    from onetrainer.util.atomic import atomic_write_text

    document = {"machine": dict(info), **extra, "rows": [row.to_json() for row in rows]}
    atomic_write_text(path, json.dumps(document, indent=2, sort_keys=False) + "\n")
