"""A training step of the real tiny SD 1.5 setup makes no device-to-host read outside the read-back.

Every way a value leaves a tensor for the host (`item`, `tolist`, `cpu`, `numpy`, `float()`, `int()`,
`bool()`, indexing with a tensor) is counted while the loop's `_steps` runs on the main thread; the
read-back (`readback.StepResults._read`) is the one place allowed to (and the FLOP count, once per batch
shape, which copies the host's RNG states). On a GPU each such read waits
for the device; on the CPU it does not, but the same calls are made, so counting them here keeps the
step free of them.
"""

from __future__ import annotations

import sys
import threading
from collections import Counter
from pathlib import Path
from types import FrameType
from typing import Any

import pytest
import torch

from onetrainer.trainer import flops, loop, readback, start
from onetrainer.trainer.components import build_parts
from onetrainer.trainer.loop import train
from onetrainer.trainer.metrics import read_metrics
from onetrainer.util.config.loader import load_config
from onetrainer.util.config.presets import presets_dir

READS = ("item", "tolist", "cpu", "numpy", "__float__", "__int__", "__bool__", "__index__")


def _where(frame: FrameType | None) -> str | None:
    """ "step" inside the loop's steps, "read-back" inside the read-back, "flop count" in the once-per-shape FLOP
    count (which saves and restores the RNG states on the host), else None."""
    inside_steps = False
    while frame is not None:
        code = frame.f_code
        if code is readback.StepResults._read.__code__:
            return "read-back"
        if code in (flops.count_flops.__code__, flops.batch_shape.__code__):
            return "flop count"
        if code is loop._steps.__code__:
            inside_steps = True
        frame = frame.f_back
    return "step" if inside_steps else None


@pytest.fixture
def host_reads(monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    """Counts of reads by where they happened, and `(method, caller)` for any inside a step."""
    counts: Counter[str] = Counter()
    main = threading.main_thread()

    def counting(name: str, original: Any) -> Any:
        def read(self: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
            if threading.current_thread() is main:
                where = _where(sys._getframe(1))
                if where is not None:
                    counts[where] += 1
                    if where == "step":
                        caller = sys._getframe(1).f_code
                        counts[f"{name} in {caller.co_name} ({Path(caller.co_filename).name})"] += 1
            return original(self, *args, **kwargs)

        return read

    for name in READS:
        monkeypatch.setattr(torch.Tensor, name, counting(name, getattr(torch.Tensor, name)))
    return counts


TRAINED = {
    "lora": ["method=lora"],
    "full": ["method=full"],
    "lora-and-text-encoder": ["method=lora", "parts.text_encoder.train=true"],
    "embedding": ["method=embedding", "embedding.placeholder=<shape>", "embedding.init_text=shape"],
    "sdxl-lora": ["model.type=sdxl", "model.base=tiny:sdxl", "method=lora"],
    "flux-lora": ["model.type=flux-dev", "model.base=tiny:flux-dev", "method=lora"],
    "lora-uncached": ["method=lora", "data.cache=false"],
}
"""What trains; with a trained text encoder or embedding the captions are encoded inside the step, and without
the cache the images and captions are; FLUX.1 is the flow-matching objective (resolution-shifted noise levels)
and a transformer on packed latents."""


@pytest.mark.parametrize("trained", list(TRAINED))
def test_a_step_reads_nothing_back_but_the_lagged_loss_and_gradient_norm(
    tmp_path: Path, shapes_dataset_dir: Path, host_reads: Counter[str], trained: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(start, "counted_on", lambda device: True)  # count on the CPU too, as on a GPU
    config = load_config(
        presets_dir() / "demo.yaml",
        [
            f"data.concepts.0.path={shapes_dataset_dir}",
            f"workspace={tmp_path / 'workspace'}",
            f"saving.output={tmp_path / 'out' / 'model.safetensors'}",
            *TRAINED[trained],
            "training.max_steps=3",
            "training.read_back_lag=1",
            "training.optimizer_args={fused: true}",
            "sampling.before_training=false",
            "sampling.every=never",
            "logging.tensorboard=false",
        ],
    )
    result = train(config, build=build_parts)
    assert result.step == 3
    assert {key: count for key, count in host_reads.items() if key not in ("read-back", "flop count")} == {}
    assert host_reads["read-back"] == 3  # one `tolist` per step, a step late
    records = read_metrics(tmp_path / "workspace" / "metrics.jsonl")
    assert [record["step"] for record in records] == [1, 2, 3]
    assert records[0]["flops_per_s"] is None  # the first step is the window's start
    assert all(record["flops_per_s"] > 0 for record in records[1:])


ON_CUDA = {
    "lora-caption-dropout": ["method=lora", "parts.text_encoder.dropout=0.5", "training.read_back_lag=1"],
    "lora-uncached": [*TRAINED["lora-uncached"], "training.read_back_lag=1"],
    "lora-average-in-cpu-memory": [
        "method=lora",
        "training.ema.enabled=true",
        "training.ema.device=cpu",
        "training.read_back_lag=1",
    ],
    "embedding": [*TRAINED["embedding"], "training.read_back_lag=1"],
    "lora-optimizer-states-in-cpu-memory": ["method=lora", "training.optimizer_offload=true"],
    "flux-lora-fp8": [*TRAINED["flux-lora"], "parts.transformer.weight_dtype=fp8", "training.read_back_lag=1"],
    "sd3-lora": ["model.type=sd35-medium", "model.base=tiny:sd35-medium", "method=lora", "training.read_back_lag=1"],
    "full-offloaded-fused": [
        "method=full",
        "parts.unet.weight_dtype=bf16",
        "parts.unet.offload_blocks=0.5",
        "training.stochastic_rounding=true",
        "training.optimizer=adafactor",
        "training.fused_backward=true",
        "training.max_grad_norm=null",
        "training.gradient_checkpointing=true",
        "training.activation_offload=true",
    ],
}
"""Paths that run only on a GPU: pinned batches and conditioning, images and captions encoded in the step,
the caption dropout's draws, an embedding's
token ids, a moving average in CPU memory, fp8 layers, SD 3's joined conditioning, offloaded blocks copied
ahead on a side stream, activations kept in CPU memory, the fused backward pass's updates on autograd's CUDA
thread."""

ALLOWED_WAITS = {("offload.py", "backward"), ("updates.py", "update"), ("ema.py", "update")}
"""A trained master in CPU memory takes its gradient when the copy has arrived (`model_setup.offload`, and
`trainer.updates` for optimizer states there); a moving average in CPU memory is updated when a chunk's copies
have (`trainer.ema`)."""


@pytest.mark.gpu
@pytest.mark.parametrize("case", list(ON_CUDA))
def test_on_cuda_a_step_waits_for_the_gpu_only_in_the_read_back(
    tmp_path: Path, shapes_dataset_dir: Path, monkeypatch: pytest.MonkeyPatch, case: str
) -> None:
    """torch's sync debug mode reports torch's own synchronising calls, also those the CPU test cannot see (a
    blocking copy to or from the device); each is placed by the innermost onetrainer frame calling it. (It does
    not see waits CUDA makes by itself, such as pinning memory.)"""
    import traceback
    import warnings

    package = Path(loop.__file__).parents[1]
    exempt = {("readback.py", "_read"), ("flops.py", "count_flops"), ("flops.py", "batch_shape")}
    waits: Counter[tuple[str, str, str]] = Counter()

    def report(message: Any, category: Any, filename: str, lineno: int, *args: Any, **kwargs: Any) -> None:
        if "synchronizing" not in str(message):
            return
        frames = [frame for frame in traceback.extract_stack()[:-1] if Path(frame.filename).name != "warnings.py"]
        if any((Path(frame.filename).name, frame.name) in exempt for frame in frames):
            return  # the read-back, and the FLOP count once per batch shape
        ours = [frame for frame in frames if Path(frame.filename).is_relative_to(package)]
        where = (Path(ours[-1].filename).name, ours[-1].name) if ours else ("?", "?")
        waits[(*where, f"{Path(frames[-1].filename).name}:{frames[-1].lineno}")] += 1

    def watched(function: Any) -> Any:
        def run(*args: Any, **kwargs: Any) -> Any:
            torch.cuda.set_sync_debug_mode("warn")
            try:
                return function(*args, **kwargs)
            finally:
                torch.cuda.set_sync_debug_mode(0)

        return run

    monkeypatch.setattr(loop, "_steps", watched(loop._steps))
    config = load_config(
        presets_dir() / "demo.yaml",
        [
            f"data.concepts.0.path={shapes_dataset_dir}",
            f"workspace={tmp_path / 'workspace'}",
            f"saving.output={tmp_path / 'out' / 'model.safetensors'}",
            "training.device=cuda",
            "training.precision=bf16",
            "training.max_steps=3",
            "sampling.before_training=false",
            "sampling.every=never",
            "logging.tensorboard=false",
            *ON_CUDA[case],
        ],
    )
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        monkeypatch.setattr(warnings, "showwarning", report)
        result = train(config, build=build_parts)
    assert result.step == 3
    unexpected = {key: count for key, count in waits.items() if key[:2] not in ALLOWED_WAITS}
    assert unexpected == {}, "\n".join(
        f"{count}x {ours}:{name} via {inner}" for (ours, name, inner), count in unexpected.items()
    )
