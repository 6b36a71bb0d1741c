"""`python -m benchmarks.gpu OUT_DIR [--dry-run | --cpu-real-size] [--budget S]` (or `benchmarks/gpu/run.sh OUT_DIR`).

Trains real-size SD 1.5 and SDXL UNets (random weights) at 512 and 1024 px, LoRA and full, and the
FLUX.1-dev transformer (12 B, built in bf16) at 1024 and 512 px with LoRA, gradient checkpointing on
and off, compiled (regional torch.compile) or not, in bf16, the SD 3.5 Medium and Large MMDiTs (2.2 B and
8.1 B, built in bf16) at 1024 px with LoRA and checkpointing, and each family's memory presets
(`benchmarks.gpu.memory`): steps per second, the model FLOP utilisation (FLOPs per step counted with
`torch.utils.flop_counter`, over the GPU's dense bf16 peak), peak VRAM while training
(`torch.cuda.max_memory_allocated` after the model is built; for a memory preset, beside `train --dry-run`'s
estimate of it) and the warm-up's seconds (which hold the compilation), ours against a bare diffusers loop.
Writes `gpu.json` and `gpu.md` (the table) to OUT_DIR, after every side of every case, so a run cut short
still leaves what it measured. Cases run in order of interest until `--budget` seconds (counted from the
start) have passed; the rest are listed as skipped.
`--family` measures only the named families' cases; `--only speed` the cases before the memory presets,
`--only memory` the presets alone (one H200 lease measures about one of the two).

`--dry-run` runs each distinct setting, and each memory preset, once on the CPU, with the tiny kit's
denoisers at 64 px and one step each (compiled cases with the `eager` backend: Dynamo's capture of the blocks,
eager kernels): it proves the script
works, and measures nothing worth keeping. `--cpu-real-size` does the same with the real-size UNets,
uncompiled: where no GPU is lent, it proves the real architectures run through both sides (minutes and
about 16 GiB of memory; SDXL's full fine-tune, whose AdamW states alone need about 40 GiB, FLUX.1-dev and
SD 3.5 Large are skipped).
"""

from __future__ import annotations

import argparse
import gc
import math
import os
import sys
import time
import traceback
from concurrent.futures import wait
from dataclasses import replace
from pathlib import Path
from typing import Any

from benchmarks.gpu import steps as steps_module
from benchmarks.gpu.memory import add_estimates, memory_presets, preset_settings, start_estimates
from benchmarks.gpu.steps import SIDES, Case, Side, Unavailable
from onetrainer.model_setup.compile import use_compile_cache

FAMILIES = ("SD1.5", "SDXL", "FLUX.1-dev", "SD3.5-medium", "SD3.5-large")
LORA_ONLY = ("FLUX.1-dev",)
"""Families measured with LoRA alone (a full FLUX.1 fine-tune needs ~190 GB: fp32 weights, gradients, AdamW);
their full fine-tunes run as memory presets only."""
CASES = list(
    dict.fromkeys(
        [
            # The goals first, the cheap uncompiled ones before the compiled ones (each compiles for a
            # minute or two): SD 1.5 LoRA at 512 px, batch 1, uncompiled and compiled (at least twice the bare
            # loop's steps/s); SDXL LoRA at 1024 px, batch 1 (the same goal); SDXL's full fine-tune at 1024 px,
            # batch 4 (35 % MFU); whether channels-last helps the convolutions; then SDXL compiled.
            Case("SD1.5", 512, "lora", False),
            Case("SD1.5", 512, "lora", False, compile=True),
            Case("SDXL", 1024, "lora", False),
            Case("SDXL", 1024, "full", False, batch=4),
            Case("SD1.5", 512, "lora", False, channels_last=True),
            Case("SDXL", 1024, "lora", False, compile=True),
            Case("SDXL", 1024, "full", False, batch=4, compile=True),
            # FLUX.1-dev as it is trained: LoRA at 1024 px with checkpointing, uncompiled and compiled.
            Case("FLUX.1-dev", 1024, "lora", True),
            Case("FLUX.1-dev", 1024, "lora", True, compile=True),
            # SD 3.5 Medium and Large (issue 15) as their presets train them: LoRA at 1024 px with checkpointing.
            Case("SD3.5-medium", 1024, "lora", True),
            Case("SD3.5-large", 1024, "lora", True),
            # Each family's memory presets (ours with the preset's levers, against the bare bf16 loop).
            *(
                Case(family=family, preset=preset, **preset_settings(preset))
                for family in FAMILIES
                for preset in memory_presets(family)
            ),
            # The rest of the grid: each family at its native size first, then the other size (FLUX.1 with
            # checkpointing first).
            *[
                Case(family, resolution, method, checkpointing, compile=compiled)
                for compiled in (False, True)
                for family, resolution in (
                    ("SD1.5", 512),
                    ("SDXL", 1024),
                    ("FLUX.1-dev", 1024),
                    ("FLUX.1-dev", 512),
                    ("SD1.5", 1024),
                    ("SDXL", 512),
                )
                for method in ("lora", "full")
                for checkpointing in ((True, False) if family in LORA_ONLY else (False, True))
                if method == "lora" or family not in LORA_ONLY
            ],
        ]
    )
)
"""In order of interest, so that a run cut short by the budget has measured the goals first (a case listed
twice keeps its first place)."""
DEFAULT_BUDGET_S = 420.0
"""On CUDA no case starts after this many seconds, so a run on one H200 ends within eight minutes."""
CPU_MEMORY = "SDXL full fine-tuning needs about 40 GiB for AdamW states alone: not on a CPU run"
FLUX_CPU_MEMORY = "the FLUX.1-dev transformer is 24 GB in bf16, twice over with both sides: not on a CPU run"
SD35_LARGE_CPU_MEMORY = "the SD 3.5 Large transformer is 16 GB in bf16, with its training state more: not on a CPU run"


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
    parser.add_argument(
        "--only",
        choices=("speed", "memory"),
        help="speed: the cases before the memory presets (issue 17's goals first); memory: the presets only",
    )
    parser.add_argument("--steps", type=int, default=10, help="timed steps per measurement")
    parser.add_argument(
        "--warmup", type=int, default=3, help="untimed steps first (allocator, kernels; at least 1 on CUDA)"
    )
    return parser.parse_args(argv)


def measure(side: str, case: Case, family: Any, device: Any, *, steps: int, warmup: int) -> dict[str, Any]:
    """steps/s, FLOPs per step, MFU, warm-up time and peak memory of one side on one case; a failure is recorded."""
    import torch

    from onetrainer.trainer.flops import device_peak
    from onetrainer.util.config.training import Precision

    cuda = torch.device(device).type == "cuda"
    _release(cuda)
    built: Side | None = None
    try:
        built = SIDES[side](family, case, device)
        _release(cuda)  # the peak of training, not of building the model
        start = time.perf_counter()
        for _ in range(warmup):
            built.step()
        _synchronize(cuda)
        warmup_s = time.perf_counter() - start
        # After the warm-up, as the trainer counts after its first step: the count runs on fake tensors, and a
        # schedule first moved to the GPU inside it (diffusers' `add_noise`, our DDPM objective) would keep a
        # fake copy for every real step after
        flops, flops_error = _count(built)
        start = time.perf_counter()
        for _ in range(steps):
            built.step()
        _synchronize(cuda)
        seconds = time.perf_counter() - start
        last_loss = built.last_loss()
        peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else None
        trainable = built.trainable
    except Unavailable as reason:
        return {"unavailable": str(reason)}
    except torch.cuda.OutOfMemoryError:
        return {"error": "out of memory"}
    except Exception:  # noqa: BLE001 - one failing case must not lose the others' numbers
        return {"error": traceback.format_exc(limit=8)}
    finally:
        built = None  # drop the model before releasing the memory it held
        try:
            _release(cuda)
        except Exception:  # noqa: BLE001 - a broken CUDA context fails the next case, not the report
            traceback.print_exc()
    steps_per_second = steps / seconds
    result: dict[str, Any] = {
        "steps_per_second": steps_per_second,
        "trainable_parameters": trainable,
        "last_loss": last_loss,
        "warmup_seconds": warmup_s,
    }
    peak_flops = device_peak(torch.device(device), Precision.BF16)
    if flops is None:
        result["flops_error"] = flops_error
    else:
        result["tflop_per_step"] = flops / 1e12
        result["tflop_per_second"] = flops * steps_per_second / 1e12
        if peak_flops is not None:
            result["mfu"] = flops * steps_per_second / peak_flops
    if peak is not None:
        result["peak_vram_gib"] = peak
    return result


def _count(built: Side) -> tuple[int | None, str | None]:
    """The side's FLOPs per step, or why they could not be counted (the speed is still measured)."""
    try:
        return built.flops(), None
    except Exception as error:  # noqa: BLE001 - a missing FLOP count must not lose the speed
        return None, f"{type(error).__name__}: {error}"


def _release(cuda: bool) -> None:
    """Free the previous side's memory and forget its compiled code (the on-disk cache stays, as for a new run)."""
    import torch

    torch._dynamo.reset()
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def _synchronize(cuda: bool) -> None:
    import torch

    if cuda:
        torch.cuda.synchronize()


def main(argv: list[str] | None = None) -> int:
    started = time.perf_counter()  # the budget counts the imports and the first CUDA calls too
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    args = _arguments(argv)
    import torch
    from diffusers.utils import logging

    from benchmarks.gpu import architectures
    from benchmarks.gpu.report import rows_of, write_report

    skipped: dict[Case, str] = {}
    logging.set_verbosity_error()  # casting a UNet to bf16 warns each time, as diffusers' own LoRA example does
    use_compile_cache()  # both sides compile into one cache, kept for the next run (see model_setup.compile)
    if args.dry_run or args.cpu_real_size:
        device, steps, warmup = "cpu", 1, 0
        cases = _on_cpu(CASES, compiled=args.dry_run)
        if args.dry_run:
            torch.set_num_threads(1)  # two threads on a busy two-core machine spin and run ten times slower
            steps_module.COMPILE_BACKEND = "eager"  # inductor's C++ build takes minutes per block on a CPU
            families = {name: architectures.tiny(name) for name in FAMILIES}
        else:
            families = {name: architectures.real(name) for name in FAMILIES}
            skipped.update({case: CPU_MEMORY for case in cases if (case.family, case.method) == ("SDXL", "full")})
            skipped.update({case: FLUX_CPU_MEMORY for case in cases if case.family == "FLUX.1-dev"})
            skipped.update({case: SD35_LARGE_CPU_MEMORY for case in cases if case.family == "SD3.5-large"})
    else:
        if not torch.cuda.is_available():
            print("no CUDA device: run with --dry-run to check the script on a CPU", file=sys.stderr)
            return 2
        device, steps, warmup = "cuda", args.steps, max(args.warmup, 1)  # FLOPs are counted after a real step
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        families = {name: architectures.real(name) for name in FAMILIES}
        cases = CASES
    if args.family:
        cases = [case for case in cases if case.family in args.family]
    if args.only:
        cases = [case for case in cases if (case.preset is not None) == (args.only == "memory")]
    gc.collect()
    gc.freeze()  # the libraries and the kit live to the end: each side's release then walks only its own objects
    budget = args.budget if args.budget is not None else (DEFAULT_BUDGET_S if device == "cuda" else math.inf)
    results: list[dict[str, Any]] = []
    estimates = start_estimates(case.preset for case in cases if case.preset is not None)

    def report() -> None:
        add_estimates(results, estimates)
        write_report(
            args.out,
            results,
            rows_of(results),
            dry_run=args.dry_run,
            cpu_real_size=args.cpu_real_size,
            steps=steps,
            warmup=warmup,
        )

    for case in cases:
        entry: dict[str, Any] = {"case": case.label(), **vars(case)}
        results.append(entry)
        if case in skipped:
            entry["skipped"] = skipped[case]
        elif time.perf_counter() - started > budget:
            entry["skipped"] = f"time budget of {budget:.0f} s spent"
        else:
            for side in SIDES:
                entry[side] = measure(side, case, families[case.family], device, steps=steps, warmup=warmup)
                report()  # after each side: a run killed mid-case keeps the side it finished
        print(_summary(entry), file=sys.stderr, flush=True)
        report()
    wait(estimates.values())
    report()
    failed = [entry for entry in results if any("error" in entry.get(side, {}) for side in SIDES)]
    return 1 if failed else 0


def _on_cpu(cases: list[Case], *, compiled: bool) -> list[Case]:
    """Each distinct setting once, at 64 px and batch 1 (a memory preset with its batch), in order of interest;
    compiled ones only if `compiled`, and without checkpointing (tests/model_setup/test_compile.py covers
    compiled blocks under checkpointing)."""
    distinct: dict[Case, None] = {}
    for case in cases:
        if case.preset is not None:
            distinct.setdefault(replace(case, resolution=64))
        elif not case.compile or (compiled and not case.checkpointing):
            distinct.setdefault(replace(case, resolution=64, batch=1))
    return list(distinct)


def _summary(entry: dict[str, Any]) -> str:
    if "skipped" in entry:
        return f"{entry['case']}: skipped ({entry['skipped']})"
    parts = []
    for side in SIDES:
        result = entry[side]
        if "steps_per_second" in result:
            vram = f", {result['peak_vram_gib']:.1f} GiB" if "peak_vram_gib" in result else ""
            mfu = f", MFU {result['mfu']:.1%}" if "mfu" in result else ""
            parts.append(f"{side} {result['steps_per_second']:.2f} steps/s{mfu}{vram}")
        else:
            parts.append(f"{side}: {result.get('unavailable') or result.get('error', '').strip().splitlines()[-1]}")
    return f"{entry['case']}: " + "; ".join(parts)


if __name__ == "__main__":
    sys.exit(main())
