"""The GPU results as rows (for the shared JSON format) and as the markdown table for the README.

Each case's cells: steps/s with the model FLOP utilisation beside it (TFLOP/s where the GPU's peak is
unknown, as on a CPU), peak VRAM (for a memory preset, with `train --dry-run`'s estimate of ours beside it),
and the warm-up's seconds, which hold the compilation.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.common import Row, format_ratio, machine, machine_line, write_results

SIDES = ("ours", "diffusers")


def rows_of(results: Sequence[dict[str, Any]]) -> list[Row]:
    """A speed row and (on CUDA) a memory row for each case both sides measured."""
    rows = []
    for entry in results:
        ours, bare = entry.get("ours", {}), entry.get("diffusers", {})
        if "steps_per_second" not in ours or "steps_per_second" not in bare:
            continue
        details = {
            "trainable_parameters": ours["trainable_parameters"],
            "last_loss": ours["last_loss"],
            "tflop_per_step": ours.get("tflop_per_step"),
            "warmup_seconds": {"ours": ours["warmup_seconds"], "diffusers": bare["warmup_seconds"]},
        }
        if "estimate_gib" in entry:
            details["dry_run_estimate_gib"] = entry["estimate_gib"]
        rows.append(
            Row(
                "gpu training step",
                entry["case"],
                ours["steps_per_second"],
                bare["steps_per_second"],
                "steps/s",
                reference_label="diffusers loop",
                details=details,
            )
        )
        if "mfu" in ours and "mfu" in bare:
            rows.append(
                Row(
                    "gpu model FLOP utilisation",
                    entry["case"],
                    ours["mfu"] * 100,
                    bare["mfu"] * 100,
                    "%",
                    reference_label="diffusers loop",
                    details=details,
                )
            )
        if "peak_vram_gib" in ours and "peak_vram_gib" in bare:
            rows.append(
                Row(
                    "gpu peak VRAM",
                    entry["case"],
                    ours["peak_vram_gib"],
                    bare["peak_vram_gib"],
                    "GiB",
                    reference_label="diffusers loop",
                    details=details,
                )
            )
    return rows


def _cell(result: dict[str, Any], key: str, unit: str) -> str:
    if key in result:
        return f"{result[key]:.2f} {unit}".rstrip()
    if "unavailable" in result:
        return "n/a"
    return "failed" if "error" in result else "—"


def _speed(result: dict[str, Any]) -> str:
    """steps/s, with the MFU beside it where the GPU's peak is known (else the TFLOP/s reached)."""
    text = _cell(result, "steps_per_second", "")
    if "mfu" in result:
        return f"{text} ({result['mfu']:.1%})"
    if "tflop_per_second" in result:
        return f"{text} ({result['tflop_per_second']:.3g} TFLOP/s)"
    return text


def _vram(result: dict[str, Any], entry: dict[str, Any]) -> str:
    """Ours' peak VRAM, with the dry-run estimate beside it for a memory preset."""
    text = _cell(result, "peak_vram_gib", "GiB")
    return f"{text} (est. {entry['estimate_gib']:.2f})" if "estimate_gib" in entry else text


def _ratio(ours: dict[str, Any], bare: dict[str, Any], key: str) -> str:
    return format_ratio(ours[key] / bare[key]) if key in ours and key in bare else "—"


def _warmup(ours: dict[str, Any], bare: dict[str, Any]) -> str:
    if "warmup_seconds" not in ours or "warmup_seconds" not in bare:
        return "—"
    return f"{ours['warmup_seconds']:.1f} / {bare['warmup_seconds']:.1f} s"


def markdown(results: Sequence[dict[str, Any]]) -> str:
    header = (
        "| case | ours steps/s (MFU) | diffusers steps/s (MFU) | speed ours / diffusers "
        "| ours peak VRAM | diffusers peak VRAM | VRAM ours / diffusers | warm-up ours / diffusers |"
    )
    lines = [header, "|---|---:|---:|---:|---:|---:|---:|---:|"]
    notes: set[str] = set()
    for entry in results:
        if "skipped" in entry:
            lines.append(f"| {entry['case']} | skipped | | | | | | |")
            continue
        ours, bare = entry.get("ours", {}), entry.get("diffusers", {})  # a side not yet run: —
        notes.update(result["unavailable"] for result in (ours, bare) if "unavailable" in result)
        lines.append(
            f"| {entry['case']} | {_speed(ours)} | {_speed(bare)} | {_ratio(ours, bare, 'steps_per_second')} "
            f"| {_vram(ours, entry)} | {_cell(bare, 'peak_vram_gib', 'GiB')} "
            f"| {_ratio(ours, bare, 'peak_vram_gib')} | {_warmup(ours, bare)} |"
        )
    lines += [f"\nn/a: {note}." for note in sorted(notes)]
    lines.append(
        "\nMFU: FLOPs per step (torch.utils.flop_counter, forward and backward, no recomputation) times steps/s, "
        "over the GPU's dense bf16 peak. est.: `train --dry-run`'s estimate of the preset's peak, less the CUDA "
        "context and workspaces, which the measured peak (`torch.cuda.max_memory_allocated`) leaves out too. "
        "Warm-up: the untimed first steps, with the compilation in compiled cases (ours compiles first; the bare "
        "loop then finds the same blocks in the compile cache)."
    )
    return "\n".join(lines) + "\n"


def write_report(out: Path, results: Sequence[dict[str, Any]], rows: Sequence[Row], **settings: Any) -> None:
    from onetrainer.util.atomic import atomic_write_text

    info = machine()
    write_results(out / "gpu.json", rows, info, **settings, cases=list(results))
    atomic_write_text(out / "gpu.md", f"{machine_line(info)}\n\n{markdown(results)}")
