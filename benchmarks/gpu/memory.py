"""The memory-preset cases of the GPU benchmark: each family's memory presets, trained as onetrainer trains them.

"Ours" takes a shipped memory preset's settings (weight dtypes, offloading, optimizer, fused backward,
stochastic rounding, checkpointing, resolution and batch) and trains the real-size denoiser (random
weights) through the setup and the trainer's own optimizer builder and step strategy. The LoRA
targets the attention projections at rank 16, as the diffusers side does, so both train the same
parameters. The reference is diffusers' bare example loop at bf16 on the same case (LoRA on a bf16
base, or a full fine-tune with fp32 weights and AdamW): what the preset's memory levers are measured
against.
"""

from __future__ import annotations

from collections.abc import Iterable
from concurrent.futures import Future
from typing import Any

FAMILY_PRESETS = {
    "SD1.5": "sd15",
    "SDXL": "sdxl",
    "FLUX.1-dev": "flux-dev",
    "SD3.5-medium": "sd35-medium",
    "SD3.5-large": "sd35-large",
}
"""Benchmark family -> the model type whose memory presets it runs."""


def memory_presets(family: str) -> list[str]:
    """The shipped memory presets of a benchmark family's model type, by budget."""
    from onetrainer.util.config.presets import memory_presets_for

    return memory_presets_for(FAMILY_PRESETS[family])


def preset_settings(preset: str) -> dict[str, Any]:
    """What the benchmark's `Case` takes from a preset: method, checkpointing, resolution, batch."""
    config = preset_config(preset, "cpu")
    resolution = config.data.resolution
    return {
        "method": config.method.value,
        "checkpointing": config.training.gradient_checkpointing,
        "resolution": max(resolution) if isinstance(resolution, list) else resolution,
        "batch": config.training.batch_size,
    }


def preset_config(preset: str, device: Any) -> Any:
    from onetrainer.util.config.loader import load_config
    from onetrainer.util.config.presets import presets_dir

    overrides = [f"training.device={device}", "lora.targets=attn", "lora.rank=16", "lora.alpha=16"]
    return load_config(presets_dir() / f"{preset}.yaml", overrides, check_paths=False)


def estimated_peak_gib(preset: str) -> float:
    """`train --dry-run`'s peak for the preset as ours trains it, less the CUDA context and workspaces, which
    `torch.cuda.max_memory_allocated` (the measured peak) does not see either: the estimate checked on a GPU."""
    from onetrainer.model_setup.estimate import GIB, estimate_memory

    estimate = estimate_memory(preset_config(preset, "cuda"))
    return sum(line.bytes for line in estimate.gpu if line.kind != "overhead") / GIB


def estimate_entry(preset: str) -> dict[str, Any]:
    """The preset's estimate (`estimate_gib`) for its case, or why there is none (the case is measured anyway)."""
    try:
        return {"estimate_gib": estimated_peak_gib(preset)}
    except Exception as error:  # noqa: BLE001 - a failing estimate must not lose the measurement
        return {"estimate_error": f"{type(error).__name__}: {error}"}


def start_estimates(presets: Iterable[str]) -> dict[str, Future[dict[str, Any]]]:
    """The presets' estimates, made in other processes while the GPU measures: each simulates a training step
    on the meta device, seconds of the host's time that a GPU lease should not wait for."""
    import multiprocessing
    import os
    from concurrent.futures import ProcessPoolExecutor

    names = sorted(set(presets))
    if not names:
        return {}
    workers = max(1, min(2, (os.cpu_count() or 2) // 2, len(names)))  # little contention with the steps timed
    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))
    futures = {name: pool.submit(estimate_entry, name) for name in names}
    pool.shutdown(wait=False)
    return futures


def add_estimates(results: Iterable[dict[str, Any]], estimates: dict[str, Future[dict[str, Any]]]) -> None:
    """Put each finished estimate into its preset's case entries; a worker process that died (killed, crashed)
    fails its futures, and that is recorded instead of ending the run."""
    for entry in results:
        estimate = estimates.get(entry["preset"])
        if estimate is not None and estimate.done():
            failed = estimate.exception()
            entry.update({"estimate_error": repr(failed)} if failed else estimate.result())
