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

from onetrainer.trainer import flops, loop, readback
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
        if code is flops.count_flops.__code__:
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
}
"""What trains; with a trained text encoder or embedding the captions are encoded inside the step; FLUX.1
is the flow-matching objective (resolution-shifted noise levels) and a transformer on packed latents."""


@pytest.mark.parametrize("trained", list(TRAINED))
def test_a_step_reads_nothing_back_but_the_lagged_loss_and_gradient_norm(
    tmp_path: Path, shapes_dataset_dir: Path, host_reads: Counter[str], trained: str
) -> None:
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
    assert all(record["flops_per_s"] is None or record["flops_per_s"] > 0 for record in records)
