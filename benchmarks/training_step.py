"""Training step: our whole loop (`trainer.loop.train`) against a bare diffusers loop, same work per step.

Ours runs the real loop: the setup's predict and loss, the trainer's precision, AdamW, clipping, the
LR scheduler, the per-step RNG snapshot for emergency backups, metrics.jsonl and TensorBoard. Its data
are cached batches (latents and text hidden states, as a warm cache provides them), so the data
loader's own cost is left to the data benchmark. The bare loop is what diffusers' text-to-image
example does per step: noise, add_noise, UNet, MSE, backward, clip, AdamW step, read the loss.

Both train the same UNet (same random weights) with the same trained parameters, batch, optimizer,
learning rate and fp32 precision. A third side steps our own setup by hand (predict, loss, backward,
clip, AdamW), so a second row shows what the loop itself adds, apart from the model family's code.
The sides alternate in rounds so a slow patch of the machine hits all, and per-step times are
medians after warm-up steps.
"""

from __future__ import annotations

import itertools
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.common import Row, Timing, build_mid_unet, timed_row

LEARNING_RATE = 1e-4
LORA_RANK = 4
TOKENS = 77
ATTENTION_PROJECTIONS = ["to_q", "to_k", "to_v", "to_out.0"]


@dataclass(frozen=True)
class Case:
    name: str
    model: str
    """"tiny" (the tiny SD 1.5 UNet) or "mid" (the SD-layout UNet of `benchmarks.common`)."""
    method: str
    latent_side: int
    batch: int = 2


def cases(quick: bool) -> list[Case]:
    if quick:
        return [Case("tiny SD1.5 UNet (0.8 M), LoRA, 8x8 latents", "tiny", "lora", 8)]
    return [
        Case("tiny SD1.5 UNet (0.8 M), LoRA, 8x8 latents", "tiny", "lora", 8),
        Case("tiny SD1.5 UNet (0.8 M), full, 8x8 latents", "tiny", "full", 8),
        Case("SD-layout UNet (34 M), LoRA, 16x16 latents", "mid", "lora", 16),
        Case("SD-layout UNet (34 M), full, 16x16 latents", "mid", "full", 16),
    ]


def _components(case: Case) -> Any:
    """The tiny pipeline, with its UNet swapped for the SD-layout one when the case asks."""
    from onetrainer.util.tiny.models import build_tiny_sd15_pipeline

    pipe = build_tiny_sd15_pipeline(seed=0)
    if case.model == "mid":
        pipe.unet = build_mid_unet(cross_attention_dim=pipe.text_encoder.config.hidden_size, sample_size=16)
    return pipe


def _batch(case: Case, context_dim: int) -> dict[str, Any]:
    import torch

    generator = torch.Generator().manual_seed(0)
    side = case.latent_side
    return {
        "latents": torch.randn(case.batch, 4, side, side, generator=generator),
        "text_hidden": torch.randn(case.batch, TOKENS, context_dim, generator=generator),
        "captions": ["a red circle"] * case.batch,
    }


class _RepeatedBatch:
    """A warm cache that serves the same batch `count` times per epoch."""

    def __init__(self, batch: dict[str, Any], count: int) -> None:
        self.batch = batch
        self.count = count

    def fill_cache(self) -> None:
        return None

    def batches(self, epoch: int, start: int = 0) -> Iterator[dict[str, Any]]:
        for _ in range(start, self.count):
            yield dict(self.batch)

    def fingerprint(self) -> str:
        return f"repeated:{self.count}"


@dataclass
class _Ours:
    config: Any
    model: Any
    setup: Any
    batch: dict[str, Any]

    @property
    def trained(self) -> int:
        return sum(param.numel() for group in self.setup.parameter_groups() for param in group["params"])


def _ours(case: Case, steps: int, workspace: Path) -> _Ours:
    """Our config, model and prepared setup for `case`, writing into `workspace`."""
    import torch

    from onetrainer.model.diffusion import DiffusionModel
    from onetrainer.util.config.loader import load_config
    from onetrainer.util.family import get_family
    from onetrainer.util.registry import ModuleKind, lookup

    config = load_config(
        None,
        [
            "model.base=tiny:sd15",
            f"method={case.method}",
            f"lora.rank={LORA_RANK}",
            f"lora.alpha={LORA_RANK}",
            "lora.targets=attn",
            f"training.learning_rate={LEARNING_RATE}",
            f"training.batch_size={case.batch}",
            f"training.max_steps={steps}",
            "training.device=cpu",
            "training.max_grad_norm=1.0",
            "saving.backup_every=never",
            f"workspace={workspace / 'workspace'}",
            f"saving.output={workspace / 'out.safetensors'}",
        ],
    )
    pipe = _components(case)
    model = DiffusionModel.from_pipeline(pipe, get_family("sd15"), source="benchmark", prediction_type="epsilon")
    setup = lookup(ModuleKind.SETUP, "sd15")(model, config)
    setup.prepare(torch.device("cpu"), torch.float32)
    return _Ours(config, model, setup, _batch(case, pipe.text_encoder.config.hidden_size))


def loop(case: Case, steps: int, workspace: Path) -> tuple[list[float], int]:
    """Per-step seconds of our loop (step event to step event) and the number of trained parameters."""
    from onetrainer.trainer.loop import train
    from onetrainer.trainer.parts import TrainingParts

    ours = _ours(case, steps, workspace)
    data = _RepeatedBatch(ours.batch, steps)

    def build(*_: Any, **__: Any) -> TrainingParts:
        return TrainingParts(
            model=ours.model,
            setup=ours.setup,
            data=data,
            batches_in_epoch=lambda epoch: steps,
            save_model=lambda path: path,
        )

    stamps: list[float] = []

    def progress(event: dict[str, Any]) -> None:
        if event["event"] in ("start", "step"):
            stamps.append(time.perf_counter())

    train(ours.config, build=build, progress=progress)
    return [later - earlier for earlier, later in itertools.pairwise(stamps)], ours.trained


def setup_by_hand(case: Case, steps: int, workspace: Path) -> tuple[list[float], int]:
    """The same setup and optimizer stepped without the loop: what the loop itself adds is the difference."""
    import torch

    from onetrainer.trainer.optimizers import build_optimizer, resolve_parameter_groups

    ours = _ours(case, steps, workspace)
    groups = resolve_parameter_groups(ours.setup.parameter_groups(), ours.config.training)
    optimizer = build_optimizer(groups, ours.config.training, torch.device("cpu"))
    trained = [param for group in groups for param in group["params"]]
    generator = torch.Generator().manual_seed(0)
    ours.setup.train()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        prediction = ours.setup.predict(ours.batch, generator)
        loss = ours.setup.loss(prediction, ours.batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trained, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        float(loss.detach())
        times.append(time.perf_counter() - start)
    return times, ours.trained


def bare(case: Case, steps: int) -> tuple[list[float], int]:
    """Per-step seconds of diffusers' example loop and the number of trained parameters."""
    import torch
    import torch.nn.functional as F
    from diffusers import DDPMScheduler

    pipe = _components(case)
    unet = pipe.unet
    unet.requires_grad_(False)
    if case.method == "lora":
        from peft import LoraConfig

        config = LoraConfig(
            r=LORA_RANK, lora_alpha=LORA_RANK, init_lora_weights="gaussian", target_modules=ATTENTION_PROJECTIONS
        )
        unet.add_adapter(config)
    else:
        unet.requires_grad_(True)
    unet.train()
    trained = [param for param in unet.parameters() if param.requires_grad]
    optimizer = torch.optim.AdamW(trained, lr=LEARNING_RATE, weight_decay=1e-2)
    scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    batch = _batch(case, pipe.text_encoder.config.hidden_size)
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        latents = batch["latents"]
        noise = torch.randn_like(latents)
        timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (latents.shape[0],))
        noisy = scheduler.add_noise(latents, noise, timesteps)
        prediction = unet(noisy, timesteps, encoder_hidden_states=batch["text_hidden"]).sample
        loss = F.mse_loss(prediction.float(), noise.float())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trained, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        float(loss.detach())
        times.append(time.perf_counter() - start)
    return times, sum(param.numel() for param in trained)


def measure(case: Case, *, steps: int, warmup: int, rounds: int) -> list[Row]:
    """Two rows: our loop against diffusers' loop, and against our own setup stepped by hand."""
    times: dict[str, list[float]] = {"loop": [], "by hand": [], "diffusers": []}
    counts: dict[str, int] = {}
    for _ in range(rounds):
        with tempfile.TemporaryDirectory() as scratch:
            for name, side in (("loop", loop), ("by hand", setup_by_hand)):
                round_times, counts[name] = side(case, steps + warmup, Path(scratch) / name.replace(" ", "-"))
                times[name] += round_times[warmup:]
        round_times, counts["diffusers"] = bare(case, steps + warmup)
        times["diffusers"] += round_times[warmup:]
    details = {"trained_parameters": counts, "steps_per_round": steps, "rounds": rounds}
    ours = Timing.of(times["loop"])
    return [
        timed_row(
            "training step",
            case.name,
            ours,
            Timing.of(times["diffusers"]),
            ours_label="our loop",
            reference_label="diffusers loop",
            details=details,
        ),
        timed_row(
            "training step",
            f"{case.name}: what the loop adds",
            ours,
            Timing.of(times["by hand"]),
            ours_label="our loop",
            reference_label="same setup, no loop",
            details=details,
        ),
    ]


def run(quick: bool) -> list[Row]:
    steps, warmup, rounds = (3, 1, 1) if quick else (20, 3, 3)
    return [row for case in cases(quick) for row in measure(case, steps=steps, warmup=warmup, rounds=rounds)]


if __name__ == "__main__":
    from rich.console import Console

    from benchmarks.common import machine, machine_line, rich_table

    rows = run(quick=False)
    Console().print(rich_table(rows, title=machine_line(machine())))
