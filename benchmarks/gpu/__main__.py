"""`python -m benchmarks.gpu OUT_DIR [--dry-run | --cpu-real-size] [--budget S]` (or `benchmarks/gpu/run.sh OUT_DIR`).

Trains real-size SD 1.5 and SDXL UNets (random weights) at 512 and 1024 px, LoRA and full, and the
FLUX.1-dev transformer (12 B, built in bf16) at 1024 and 512 px with LoRA, gradient checkpointing on
and off, in bf16, and each family's memory presets (`benchmarks.gpu.memory`): steps per second and
peak VRAM while training (`torch.cuda.max_memory_allocated` after the model is built), ours against a
bare diffusers loop. Writes `gpu.json` and `gpu.md` (the table) to OUT_DIR, after
every case, so a run cut short still leaves what it measured. Cases run in order of interest until
`--budget` seconds have passed; the rest are listed as skipped.

`--dry-run` runs each family, method and checkpointing setting, and each memory preset, once on the CPU,
with the tiny kit's UNets at 64 px and one step each: it proves the script works, and measures nothing
worth keeping.
`--cpu-real-size` does the same with the real-size UNets: where no GPU is lent, it proves the real
architectures run through both sides (minutes and about 16 GiB of memory; SDXL's full fine-tune, whose
AdamW states alone need about 40 GiB, is skipped).
"""

from __future__ import annotations

import argparse
import gc
import math
import os
import sys
import time
import traceback
from dataclasses import replace
from pathlib import Path
from typing import Any

from benchmarks.gpu.memory import memory_presets, preset_settings
from benchmarks.gpu.steps import SIDES, Case, Step, Unavailable

FAMILIES = ("SD1.5", "SDXL", "FLUX.1-dev")
LORA_ONLY = ("FLUX.1-dev",)
"""Families measured with LoRA alone (a full FLUX.1 fine-tune needs ~190 GB: fp32 weights, gradients, AdamW);
their full fine-tunes run as memory presets only."""


def _plain(sizes: tuple[tuple[str, int], ...]) -> list[Case]:
    return [
        Case(family, resolution, method, checkpointing)
        for family, resolution in sizes
        for method in ("lora", "full")
        for checkpointing in ((True, False) if family in LORA_ONLY else (False, True))
        if method == "lora" or family not in LORA_ONLY
    ]


CASES = [
    *_plain((("SD1.5", 512), ("SDXL", 1024), ("FLUX.1-dev", 1024))),
    *(
        Case(family=family, preset=preset, **preset_settings(preset))
        for family in FAMILIES
        for preset in memory_presets(family)
    ),
    *_plain((("FLUX.1-dev", 512), ("SD1.5", 1024), ("SDXL", 512))),
]
"""Each family at its native size first (FLUX.1 with checkpointing first: how it is trained), then its
memory presets, so a run cut short by the budget has the cases users train."""
DEFAULT_BUDGET_S = 420.0
"""On CUDA no case starts after this many seconds, so a run on one H200 ends within eight minutes."""
CPU_MEMORY = "SDXL full fine-tuning needs about 40 GiB for AdamW states alone: not on a CPU run"
FLUX_CPU_MEMORY = "the FLUX.1-dev transformer is 24 GB in bf16, twice over with both sides: not on a CPU run"


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu", description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="folder for gpu.json and gpu.md")
    on_cpu = parser.add_mutually_exclusive_group()
    on_cpu.add_argument("--dry-run", action="store_true", help="tiny UNets on the CPU, one step: proves the script")
    on_cpu.add_argument(
        "--cpu-real-size", action="store_true", help="real-size UNets on the CPU at 64 px, one step: checks them"
    )
    parser.add_argument(
        "--budget", type=float, default=None, help="start no case after this many seconds (default 420 on CUDA)"
    )
    parser.add_argument(
        "--family", action="append", choices=FAMILIES, help="measure only this family (repeatable; default: all)"
    )
    parser.add_argument("--steps", type=int, default=10, help="timed steps per measurement")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (allocator, kernels)")
    return parser.parse_args(argv)


def measure(side: str, case: Case, family: Any, device: Any, *, steps: int, warmup: int) -> dict[str, Any]:
    """steps/s and peak memory of one side on one case; a failure is recorded, not raised."""
    import torch

    cuda = torch.device(device).type == "cuda"
    _release(cuda)
    step: Step | None = None
    try:
        step, trainable = SIDES[side](family, case, device)
        _release(cuda)  # the peak of training, not of building the model
        losses = [step() for _ in range(warmup)]
        _synchronize(cuda)
        start = time.perf_counter()
        losses += [step() for _ in range(steps)]
        _synchronize(cuda)
        seconds = time.perf_counter() - start
        peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else None
    except Unavailable as reason:
        return {"unavailable": str(reason)}
    except torch.cuda.OutOfMemoryError:
        return {"error": "out of memory"}
    except Exception:  # noqa: BLE001 - one failing case must not lose the others' numbers
        return {"error": traceback.format_exc(limit=8)}
    finally:
        step = None  # drop the model before releasing the memory it held
        _release(cuda)
    result: dict[str, Any] = {"steps_per_second": steps / seconds, "trainable_parameters": trainable}
    result["last_loss"] = losses[-1]
    if peak is not None:
        result["peak_vram_gib"] = peak
    return result


def _release(cuda: bool) -> None:
    import torch

    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def _synchronize(cuda: bool) -> None:
    import torch

    if cuda:
        torch.cuda.synchronize()


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    args = _arguments(argv)
    import torch
    from diffusers.utils import logging

    from benchmarks.gpu import architectures
    from benchmarks.gpu.report import rows_of, write_report

    skipped: dict[Case, str] = {}
    logging.set_verbosity_error()  # casting a UNet to bf16 warns each time, as diffusers' own LoRA example does
    if args.dry_run or args.cpu_real_size:
        device, steps, warmup = "cpu", 1, 0
        cases = [replace(c, resolution=64) for c in CASES if c.resolution == 512 and c.preset is None]
        cases.sort(key=lambda case: (FAMILIES.index(case.family), case.method != "lora", case.checkpointing))
        cases += [replace(c, resolution=64) for c in CASES if c.preset is not None]
        if args.dry_run:
            torch.set_num_threads(1)  # two threads on a busy two-core machine spin and run ten times slower
            families = {name: architectures.tiny(name) for name in FAMILIES}
        else:
            families = {name: architectures.real(name) for name in FAMILIES}
            skipped.update({case: CPU_MEMORY for case in cases if case.family == "SDXL" and case.method == "full"})
            skipped.update({case: FLUX_CPU_MEMORY for case in cases if case.family == "FLUX.1-dev"})
    else:
        if not torch.cuda.is_available():
            print("no CUDA device: run with --dry-run to check the script on a CPU", file=sys.stderr)
            return 2
        device, steps, warmup = "cuda", args.steps, args.warmup
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        families = {name: architectures.real(name) for name in FAMILIES}
        cases = CASES
    if args.family:
        cases = [case for case in cases if case.family in args.family]
    budget = args.budget if args.budget is not None else (DEFAULT_BUDGET_S if device == "cuda" else math.inf)
    started = time.perf_counter()
    results: list[dict[str, Any]] = []
    for case in cases:
        entry: dict[str, Any] = {"case": case.label(), **vars(case)}
        if case in skipped:
            entry["skipped"] = skipped[case]
        elif time.perf_counter() - started > budget:
            entry["skipped"] = f"time budget of {budget:.0f} s spent"
        else:
            for side in SIDES:
                entry[side] = measure(side, case, families[case.family], device, steps=steps, warmup=warmup)
        results.append(entry)
        print(_summary(entry), file=sys.stderr, flush=True)
        write_report(
            args.out,
            results,
            rows_of(results),
            dry_run=args.dry_run,
            cpu_real_size=args.cpu_real_size,
            steps=steps,
            warmup=warmup,
        )
    failed = [entry for entry in results if any("error" in entry.get(side, {}) for side in SIDES)]
    return 1 if failed else 0


def _summary(entry: dict[str, Any]) -> str:
    if "skipped" in entry:
        return f"{entry['case']}: skipped ({entry['skipped']})"
    parts = []
    for side in SIDES:
        result = entry[side]
        if "steps_per_second" in result:
            vram = f", {result['peak_vram_gib']:.1f} GiB" if "peak_vram_gib" in result else ""
            parts.append(f"{side} {result['steps_per_second']:.2f} steps/s{vram}")
        else:
            parts.append(f"{side}: {result.get('unavailable') or result.get('error', '').strip().splitlines()[-1]}")
    return f"{entry['case']}: " + "; ".join(parts)


if __name__ == "__main__":
    sys.exit(main())
