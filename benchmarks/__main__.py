"""`python -m benchmarks [--quick] [--out FILE.json] [--only NAME ...] [--markdown FILE.md]`.

Runs each CPU benchmark in turn, prints one table of ratios and writes the JSON (machine, rows, and
any benchmark that failed). A failing benchmark does not stop the others; the exit status is 1 when
any failed, so the smoke test notices.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

from benchmarks.common import Row, machine, machine_line, markdown_table, rich_table, write_results

BENCHMARKS = ("startup", "data_loader", "training_step", "sampling", "convert", "loading")
"""Run order: start-up first, before the heavy ones have warmed the page cache; convert and loading last,
as they need the most memory. Each is the module `benchmarks.<name>` with `run(quick) -> list[Row]`, or an
adapter below for one written as a stand-alone script."""


def _data_loader(quick: bool) -> list[Row]:
    """`benchmarks/data_loader.py` is also a script that prints its own summary: keep that on stderr."""
    from benchmarks import data_loader

    with contextlib.redirect_stdout(sys.stderr):
        result = data_loader.main(["--smallest"] if quick else [])
    cached = {"samples_per_second": result["samples_per_second"], "batches_per_second": result["batches_per_second"]}
    return [
        Row(
            "data",
            "time waiting for the next batch, warm cache, simulated 40 ms step",
            100 * result["wait_share"],
            100.0,
            "%",
            ours_label="waiting",
            reference_label="whole loop",
            details={"cached_epoch_read": cached},
        ),
        Row(
            "data",
            "cache fill with the tiny VAE (whole pass)",
            result["batched_seconds"],
            result["per_sample_seconds"],
            "s",
            ours_label="batched per bucket",
            reference_label="per sample",
        ),
        Row(
            "data",
            "cache fill with the tiny VAE (encoder calls only)",
            result["batched_encoder_seconds"],
            result["per_sample_encoder_seconds"],
            "s",
            ours_label="batched per bucket",
            reference_label="per sample",
            details={"calls": {"batched": result["batched_calls"], "per_sample": result["per_sample_calls"]}},
        ),
    ]


ADAPTERS: dict[str, Callable[[bool], list[Row]]] = {"data_loader": _data_loader}


def _runner(name: str) -> Callable[[bool], list[Row]]:
    return ADAPTERS.get(name) or importlib.import_module(f"benchmarks.{name}").run


DEFAULT_OUT = Path("workspace/benchmarks/cpu.json")


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smallest sizes, one repeat (the smoke test)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"JSON results file (default: {DEFAULT_OUT})")
    parser.add_argument("--markdown", type=Path, help="also write the table as markdown, for the README")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads (default 1: on a shared machine, spinning OpenMP threads make timings vary tenfold)",
    )
    parser.add_argument("--only", action="append", choices=BENCHMARKS, help="run only this benchmark (repeatable)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from rich.console import Console

    args = _arguments(argv)
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    import torch

    torch.set_num_threads(args.threads)
    console = Console(stderr=True)
    rows = []
    failures: dict[str, str] = {}
    durations: dict[str, float] = {}
    for name in args.only or BENCHMARKS:
        console.print(f"[bold]{name}[/] …")
        start = time.perf_counter()
        try:
            rows += _runner(name)(args.quick)
        except Exception:  # noqa: BLE001 - one broken benchmark must not hide the others' results
            failures[name] = traceback.format_exc()
            console.print(f"[red]{name} failed[/]\n{failures[name]}")
        durations[name] = round(time.perf_counter() - start, 1)
    info = machine()
    write_results(args.out, rows, info, quick=args.quick, seconds=durations, failures=failures)
    if args.markdown is not None:
        from onetrainer.util.atomic import atomic_write_text

        atomic_write_text(args.markdown, f"{machine_line(info)}\n\n{markdown_table(rows)}")
    Console(width=None if sys.stdout.isatty() else 160).print(rich_table(rows, title=machine_line(info)))
    console.print(f"results: {args.out} ({sum(durations.values()):.0f} s)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
