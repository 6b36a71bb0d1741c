"""Loading: the registered loader reading a single file of real SD 1.5 size with its UNet quantised.

The same random-weight single file the convert benchmark builds (SD 1.5's architecture, ~1.07 B fp16
parameters, 2.1 GB) is loaded in a fresh process by `DiffusersLoader`, as `train` loads a base model
(with the tiny kit's CLIP tokenizer padded to CLIP-L's 49,408 tokens),
with the UNet stored as fp8 (torchao) or nf4 (bitsandbytes) and everything else in bf16, and for
reference with nothing quantised, all in bf16. Each process first loads the tiny model the same way
(imports and first-use caches), then reports the resident memory the real load added at its peak
(`VmHWM` after `clear_refs`, less the resident set before) and the load's wall time.

A quantised UNet is filled tensor by tensor as the file is read (`model_loader.streaming`), so its
load should peak well under the bf16 one, which holds the whole UNet in bf16; the time it costs is
the quantiser's (bitsandbytes quantises nf4 on the CPU slowly, as this row shows). On a CUDA machine an
nf4 row quantised on the GPU is added, as `train` quantises for a GPU run (the weights come back to the
CPU as they are quantised).

`quick` does the same on the tiny SD 1.5 model, in seconds.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks.common import Row, Timing, timed_row
from benchmarks.convert import build_checkpoint, component_configs

STORAGES = ("fp8", "nf4")
GPU_NF4 = "nf4 quantised on the GPU"

_LOAD = """
import json, sys, time
from pathlib import Path
import torch
from onetrainer.model.quantised import QuantisedStorage
from onetrainer.util.config.model import ModelConfig
from onetrainer.util.registry import ModuleKind, lookup

source, storage, architecture, tokenizer, on = sys.argv[1], sys.argv[2], sys.argv[3] or None, sys.argv[4], sys.argv[5]
loader = lookup(ModuleKind.LOADER, "sd15")()
quantise = {} if storage == "bf16" else {"unet": QuantisedStorage(storage, torch.bfloat16, quantise_on=on)}
loader.load(ModelConfig(type="sd15", base="tiny:sd15", dtype="bf16"), quantise=quantise)


def status(key):
    text = Path("/proc/self/status").read_text()
    return int(next(line.split()[1] for line in text.splitlines() if line.startswith(key + ":"))) * 1024


Path("/proc/self/clear_refs").write_text("5")
before = status("VmRSS")
start = time.perf_counter()
config = ModelConfig(type="sd15", base=source, dtype="bf16", config=architecture, tokenizer=tokenizer)
model = loader.load(config, quantise=quantise)
seconds = time.perf_counter() - start
print(json.dumps({"seconds": seconds, "peak": status("VmHWM") - before}))
"""
"""Loads the file as `train` would (sd15's registered loader, bf16) and prints the load's seconds and the
resident memory it added at its peak."""


def write_tokenizer(folder: Path, vocab_size: int) -> Path:
    """The tiny kit's CLIP tokenizer padded to `vocab_size` tokens: no real vocabulary can be had here, and
    loading checks that the tokenizer fits the text encoder's embedding."""
    from onetrainer.util.tiny.tokenizer import build_tiny_clip_tokenizer

    build_tiny_clip_tokenizer(vocab_size).save_pretrained(folder)
    return folder


def load_once(
    source: Path, storage: str, architecture: str, tokenizer: str, quantise_on: str = "cpu"
) -> dict[str, float]:
    """One load in a fresh interpreter: {"seconds", "peak"} (bytes added to the resident set at the peak)."""
    done = subprocess.run(
        [sys.executable, "-c", _LOAD, str(source), storage, architecture, tokenizer, quantise_on],
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"loading {source.name} with the UNet as {storage} failed:\n{done.stderr[-2000:]}")
    report: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return report


def run(quick: bool) -> list[Row]:
    variant = "tiny" if quick else "sd15"
    with tempfile.TemporaryDirectory(prefix="onetrainer-bench-loading-") as scratch:
        source = Path(scratch) / "model.safetensors"
        sizes = build_checkpoint(source, variant)
        architecture = "tiny:sd15" if quick else ""
        vocab_size = component_configs(variant)["text_encoder"]["vocab_size"]
        tokenizer = "tiny:sd15" if quick else str(write_tokenizer(Path(scratch) / "tokenizer", vocab_size))
        loads = {storage: load_once(source, storage, architecture, tokenizer) for storage in ("bf16", *STORAGES)}
        import torch

        if torch.cuda.is_available():
            loads[GPU_NF4] = load_once(source, "nf4", architecture, tokenizer, quantise_on="cuda")
    return _rows(loads, unet_bf16=sizes["unet"], variant=variant)


def _rows(loads: dict[str, dict[str, float]], *, unet_bf16: int, variant: str) -> list[Row]:
    model = "SD1.5 size (1.07 B params, fp16 file)" if variant == "sd15" else "tiny SD1.5"
    details = {"peak_rss_mib": {name: load["peak"] / 2**20 for name, load in loads.items()}, "unet_bf16": unet_bf16}
    plain = loads["bf16"]
    rows = []
    for storage in [name for name in loads if name != "bf16"]:
        rows.append(
            Row(
                "loading",
                f"{model}: single file, UNet {storage}: peak RSS the load adds",
                loads[storage]["peak"] / 2**20,
                plain["peak"] / 2**20,
                "MiB",
                ours_label=f"UNet {storage}",
                reference_label="all bf16",
                details=details,
            )
        )
        rows.append(
            timed_row(
                "loading",
                f"{model}: single file, UNet {storage}: load time",
                Timing.of([loads[storage]["seconds"]]),
                Timing.of([plain["seconds"]]),
                ours_label=f"UNet {storage}",
                reference_label="all bf16",
                details=details,
            )
        )
    return rows
