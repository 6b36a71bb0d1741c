"""Start-up cost: `onetrainer --help`, and importing each command module, in fresh interpreters.

A CLI that imports torch, diffusers or peft at start pays seconds before printing its help. Each
command module is imported alone in a new process and timed there, against `import torch` timed the
same way, and the heavy packages left in `sys.modules` afterwards are recorded: a command module that
pulls one in shows up by name, not just as a slower number.
"""

from __future__ import annotations

import json
import os
import pkgutil
import subprocess
import sys

from benchmarks.common import Row, Timing, median_time, paired_times, timed_row

HEAVY = ("torch", "diffusers", "transformers", "peft", "safetensors", "numpy", "PIL")
"""Packages a command module should import only inside the functions that use them."""

_IMPORT_PROBE = """
import json, sys, time
start = time.perf_counter()
import {module}
elapsed = time.perf_counter() - start
print(json.dumps({{"seconds": elapsed, "heavy": [m for m in {heavy!r} if m in sys.modules]}}))
"""


def _environment() -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1"}


def _run(command: list[str]) -> str:
    done = subprocess.run(command, capture_output=True, text=True, env=_environment(), check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} exited {done.returncode}: {done.stderr.strip()[-2000:]}")
    return done.stdout


def command_modules() -> list[str]:
    """`onetrainer.commands.app` (what `--help` loads) and every command module beside it."""
    import onetrainer.commands

    names = sorted(info.name for info in pkgutil.iter_modules(onetrainer.commands.__path__))
    return [f"onetrainer.commands.{name}" for name in names if not name.startswith("_")]


def import_time(module: str, *, repeats: int, warmup: int) -> tuple[Timing, list[str]]:
    """Wall time of `import module` inside a fresh interpreter (interpreter start-up excluded)."""
    samples: list[float] = []
    heavy: list[str] = []
    for index in range(warmup + max(repeats, 1)):
        probe = json.loads(_run([sys.executable, "-c", _IMPORT_PROBE.format(module=module, heavy=HEAVY)]))
        heavy = probe["heavy"]
        if index >= warmup:
            samples.append(probe["seconds"])
    return Timing.of(samples), heavy


def run(quick: bool) -> list[Row]:
    repeats, warmup = (1, 0) if quick else (3, 1)
    python = sys.executable
    help_command = [python, "-m", "onetrainer", "--help"]
    help_time, bare = paired_times(
        lambda: _run(help_command), lambda: _run([python, "-c", "pass"]), repeats=repeats, warmup=warmup
    )
    torch_import, _ = import_time("torch", repeats=repeats, warmup=warmup)
    torch_process = median_time(lambda: _run([python, "-c", "import torch"]), repeats=repeats, warmup=warmup)
    rows = [
        timed_row(
            "startup", "onetrainer --help (process wall time)", help_time, bare, reference_label="python -c pass"
        ),
        timed_row(
            "startup",
            "onetrainer --help (process wall time)",
            help_time,
            torch_process,
            reference_label="python -c 'import torch'",
        ),
    ]
    for module in command_modules():
        timing, heavy = import_time(module, repeats=repeats, warmup=warmup)
        rows.append(
            timed_row(
                "startup",
                f"import {module}",
                timing,
                torch_import,
                reference_label="import torch",
                details={"heavy_modules_loaded": heavy},
            )
        )
    return rows
