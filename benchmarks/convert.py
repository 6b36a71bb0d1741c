"""Convert: `onetrainer convert` on a checkpoint of real SD 1.5 size, against a plain safetensors copy.

A single file of SD 1.5's exact architecture (shipped configs, ~1.07 B parameters, fp16, ~2.1 GB) is
built on the fly with random weights, converted to a diffusers folder and back to a single file by
the real CLI in a fresh process each, and compared with the least any tool must do: read every
tensor of the same file with safetensors and write it again. Each process's own peak RSS (`VmHWM`)
is set against the largest single component (the UNet), which a converter that streams tensor by
tensor could stay near; the plain copy holds the whole file.

`quick` does the same on the tiny SD 1.5 model, in seconds.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import tempfile
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.common import Row, Timing, timed_row

POOL_SIZE = 1 << 24
"""Random values are drawn once and tiled into every tensor from a key-dependent offset: drawing
1 B fresh values would take a minute on one core, and a converter cannot tell the difference."""

_PLAIN_COPY = """
import sys
from safetensors.torch import load_file
from onetrainer.util.atomic import save_safetensors
save_safetensors(load_file(sys.argv[1]), sys.argv[2])
"""

_MEASURED = """
import runpy, sys
from pathlib import Path
from onetrainer.util.atomic import atomic_write_text
report, kind, target, *arguments = sys.argv[1:]
sys.argv = [target, *arguments]
code = 0
try:
    if kind == "module":
        runpy.run_module(target, run_name="__main__", alter_sys=True)
    else:
        exec(compile(target, "<benchmark>", "exec"), {"__name__": "__main__"})
except SystemExit as stop:
    code = stop.code or 0
status = Path("/proc/self/status").read_text()
atomic_write_text(report, next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:")))
sys.exit(code)
"""
"""Runs a module or code in a fresh interpreter and reports the high-water mark of its own memory map.

The kernel's `ru_maxrss` of a child counts the memory of the parent it was forked from (several
hundred MB of torch here); `VmHWM` is reset by exec, so it is the child's own peak.
"""


@dataclass(frozen=True)
class Process:
    seconds: float
    peak_rss: int
    """Bytes."""


def component_configs(variant: str) -> dict[str, dict[str, Any]]:
    """UNet / VAE / text-encoder configs: SD 1.5's shipped ones, or the tiny model's."""
    if variant == "tiny":
        from onetrainer.util.tiny.models import build_tiny_sd15_pipeline

        pipe = build_tiny_sd15_pipeline(seed=0)
        return {
            "unet": dict(pipe.unet.config),
            "vae": dict(pipe.vae.config),
            "text_encoder": pipe.text_encoder.config.to_dict(),
        }
    from onetrainer.model.configs import config_dir

    folder = config_dir(variant)
    return {
        name: json.loads((folder / name / "config.json").read_text(encoding="utf-8"))
        for name in ("unet", "vae", "text_encoder")
    }


def shapes(configs: dict[str, dict[str, Any]]) -> dict[str, list[tuple[str, tuple[int, ...]]]]:
    """Each component's diffusers state-dict keys and shapes, from modules built on the meta device."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    builders = {
        "unet": lambda config: UNet2DConditionModel.from_config(config),
        "vae": lambda config: AutoencoderKL.from_config(config),
        "text_encoder": lambda config: CLIPTextModel(CLIPTextConfig(**config)),
    }
    result = {}
    for name, build in builders.items():
        with torch.device("meta"):
            module = build(configs[name])
        result[name] = [(key, tuple(tensor.shape)) for key, tensor in module.state_dict().items()]
    return result


def random_stream(layout: dict[str, list[tuple[str, tuple[int, ...]]]], seed: int = 0) -> Any:
    """A replayable `(component.key, fp16 tensor)` stream of reproducible random weights."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    pool = torch.empty(POOL_SIZE, dtype=torch.float16).uniform_(-0.05, 0.05, generator=generator)

    def tensor(key: str, shape: tuple[int, ...]) -> torch.Tensor:
        count = math.prod(shape)
        start = zlib.crc32(key.encode()) % POOL_SIZE
        source = pool if start + count <= POOL_SIZE else pool.repeat(-(-(start + count) // POOL_SIZE))
        return source[start : start + count].reshape(shape).clone()

    def stream(meta: bool, components: tuple[str, ...] = ("unet", "vae", "text_encoder")) -> Iterator[Any]:
        for component in components:
            for key, shape in layout[component]:
                name = f"{component}.{key}"
                yield name, torch.empty(shape, dtype=torch.float16, device="meta") if meta else tensor(name, shape)

    return stream


def build_checkpoint(path: Path, variant: str) -> dict[str, int]:
    """Write the random-weight single file; returns each component's size in bytes (fp16)."""
    from onetrainer.model_saver.full_model import write_single_file
    from onetrainer.util.family import get_family

    layout = shapes(component_configs(variant))
    write_single_file(
        path,
        random_stream(layout),
        spec=get_family("sd15"),
        prediction_type="epsilon",
        metadata={"benchmark": "convert"},
    )
    return {name: 2 * sum(math.prod(shape) for _, shape in keys) for name, keys in layout.items()}


def run_process(kind: str, target: str, arguments: list[str], scratch: Path) -> Process:
    """Wall time and peak resident memory of `python -m target` (`kind` module) or `python -c target`."""
    report, log = scratch / "peak-rss.txt", scratch / "process.log"
    command = [sys.executable, "-c", _MEASURED, str(report), kind, target, *arguments]
    with log.open("wb") as output:
        start = time.perf_counter()
        done = subprocess.run(
            command, stdout=output, stderr=subprocess.STDOUT, env={**os.environ, "HF_HUB_OFFLINE": "1"}
        )
        seconds = time.perf_counter() - start
    if done.returncode != 0:
        tail = log.read_text(encoding="utf-8", errors="replace")[-2000:]
        raise RuntimeError(f"{target} {' '.join(arguments)} exited {done.returncode}:\n{tail}")
    return Process(seconds, int(report.read_text(encoding="utf-8")) * 1024)


def identical_files(first: Path, second: Path) -> bool:
    """Same keys, dtypes, shapes and bytes, compared tensor by tensor (headers may order keys differently)."""
    import torch
    from safetensors import safe_open

    with safe_open(str(first), "pt") as a, safe_open(str(second), "pt") as b:
        keys = list(a.keys())
        if set(keys) != set(b.keys()):
            return False
        return all(torch.equal(a.get_tensor(key), b.get_tensor(key)) for key in keys)


def run(quick: bool) -> list[Row]:
    variant, repeats = ("tiny", 1) if quick else ("sd15", 2)
    with tempfile.TemporaryDirectory(prefix="onetrainer-bench-convert-") as scratch:
        root = Path(scratch)
        source = root / "model.safetensors"
        sizes = build_checkpoint(source, variant)
        architecture = ["--config", "tiny:sd15"] if quick else []
        steps: dict[str, tuple[str, str, list[str]]] = {
            "to_diffusers": (
                "module",
                "onetrainer",
                [
                    *("convert", str(source), str(root / "diffusers"), "--to", "diffusers"),
                    *("--tokenizer", "tiny:sd15", "--overwrite", *architecture),
                ],
            ),
            "to_single_file": (
                "module",
                "onetrainer",
                [
                    "convert",
                    str(root / "diffusers"),
                    str(root / "back.safetensors"),
                    "--to",
                    "single-file",
                    "--overwrite",
                ],
            ),
            "plain_copy": ("code", _PLAIN_COPY, [str(source), str(root / "copy.safetensors")]),
        }
        runs: dict[str, list[Process]] = {name: [] for name in steps}
        for _ in range(repeats):  # no warm-up round: building the input left it in the page cache
            for name, (kind, target, arguments) in steps.items():
                runs[name].append(run_process(kind, target, arguments, root))
        round_trip = identical_files(source, root / "back.safetensors")
        file_size = source.stat().st_size
    return _rows(runs, sizes, file_size, round_trip, variant)


def _rows(
    runs: dict[str, list[Process]], sizes: dict[str, int], file_size: int, round_trip: bool, variant: str
) -> list[Row]:
    model = "SD1.5 size (1.07 B params, fp16)" if variant == "sd15" else "tiny SD1.5"
    timings = {name: Timing.of([p.seconds for p in processes]) for name, processes in runs.items()}
    peaks = {name: max(p.peak_rss for p in processes) / 2**20 for name, processes in runs.items()}
    largest = max(sizes, key=lambda name: sizes[name])
    details = {
        "file_bytes": file_size,
        "component_bytes": sizes,
        "round_trip_identical": round_trip,
        "peak_rss_mib": peaks,
    }
    plain = "safetensors read+write"
    rows = [
        timed_row(
            "convert", f"{model}: single file → diffusers (process)", timings["to_diffusers"], timings["plain_copy"],
            reference_label=plain, details=details,
        ),
        timed_row(
            "convert", f"{model}: diffusers → single file (process)", timings["to_single_file"], timings["plain_copy"],
            reference_label=plain, details=details,
        ),
    ]  # fmt: skip
    for name, label in (
        ("to_diffusers", "single file → diffusers"),
        ("plain_copy", plain),
        ("to_single_file", "diffusers → single file"),
    ):
        rows.append(
            Row(
                "convert",
                f"{model}: peak RSS of {label}",
                peaks[name],
                sizes[largest] / 2**20,
                "MiB",
                ours_label="peak RSS" if name != "plain_copy" else plain,
                reference_label=f"largest component ({largest})",
                repeats=len(runs[name]),
                details=details,
            )
        )
    return rows
