"""Sampling: our sampler (`model_sampler`) against diffusers' `StableDiffusionPipeline`.

Both run on the very same modules (one set of weights), with the same scheduler class and config,
steps, guidance, size and seed; our sampler promises the same image as the pipeline, so the largest
pixel difference is recorded beside the times as a check that the two did the same work.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from benchmarks.common import Row, build_mid_unet, paired_times, timed_row

PROMPT = "a red cube on a wooden table, studio light"
NEGATIVE = "blurry"
SEED = 7


@dataclass(frozen=True)
class Case:
    name: str
    model: str
    scheduler: str
    steps: int
    size: int
    cfg: float = 7.5


REFERENCE_SCHEDULERS: dict[str, tuple[str, dict[str, Any]]] = {
    "ddim": ("DDIMScheduler", {}),
    "dpm++2m-karras": (
        "DPMSolverMultistepScheduler",
        {"algorithm_type": "dpmsolver++", "solver_order": 2, "use_karras_sigmas": True},
    ),
}
"""Our scheduler name -> the diffusers class and settings a diffusers user would pick for it."""


def cases(quick: bool) -> list[Case]:
    if quick:
        return [Case("tiny SD1.5 UNet (0.8 M), 64 px", "tiny", "ddim", steps=2, size=64)]
    return [
        Case("tiny SD1.5 UNet (0.8 M), 64 px", "tiny", "ddim", steps=10, size=64),
        Case("tiny SD1.5 UNet (0.8 M), 64 px", "tiny", "dpm++2m-karras", steps=10, size=64),
        Case("SD-layout UNet (34 M), 128 px", "mid", "ddim", steps=10, size=128),
    ]


def _pipeline(model: str) -> Any:
    from diffusers import StableDiffusionPipeline

    from onetrainer.util.tiny.models import build_tiny_sd15_pipeline

    tiny = build_tiny_sd15_pipeline(seed=0)
    if model == "tiny":
        return tiny
    pipe = StableDiffusionPipeline(
        vae=tiny.vae,
        text_encoder=tiny.text_encoder,
        tokenizer=tiny.tokenizer,
        unet=build_mid_unet(cross_attention_dim=tiny.text_encoder.config.hidden_size, sample_size=16),
        scheduler=tiny.scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _our_model(pipe: Any) -> Any:
    from onetrainer.model.diffusion import DiffusionModel
    from onetrainer.util.family import get_family

    return DiffusionModel.from_pipeline(pipe, get_family("sd15"), source="benchmark")


def _largest_pixel_difference(ours: Any, reference: Any) -> int:
    import numpy as np

    return int(np.abs(np.asarray(ours, dtype=np.int16) - np.asarray(reference, dtype=np.int16)).max())


def measure(case: Case, pipe: Any, *, repeats: int, warmup: int) -> Row:
    import diffusers
    import torch

    from onetrainer.util.registry import ModuleKind, lookup

    sampler = lookup(ModuleKind.SAMPLER, "sd15")(_our_model(pipe))
    class_name, settings = REFERENCE_SCHEDULERS[case.scheduler]
    base_config = pipe.scheduler.config
    pipe.scheduler = getattr(diffusers, class_name).from_config(base_config, **settings)
    images: dict[str, Any] = {}

    def ours() -> None:
        images["ours"] = sampler.sample(
            PROMPT,
            NEGATIVE,
            steps=case.steps,
            cfg=case.cfg,
            seed=SEED,
            width=case.size,
            height=case.size,
            scheduler=case.scheduler,
        )[0]

    def reference() -> None:
        images["reference"] = pipe(
            PROMPT,
            negative_prompt=NEGATIVE,
            num_inference_steps=case.steps,
            guidance_scale=case.cfg,
            generator=torch.Generator("cpu").manual_seed(SEED),
            width=case.size,
            height=case.size,
        ).images[0]

    try:
        with torch.inference_mode():
            ours_time, reference_time = paired_times(ours, reference, repeats=repeats, warmup=warmup)
    finally:
        pipe.scheduler = diffusers.DDPMScheduler.from_config(base_config)
    return timed_row(
        "sampling",
        f"{case.name}, {case.scheduler} {case.steps} steps, CFG {case.cfg}",
        ours_time,
        reference_time,
        reference_label="diffusers pipeline",
        details={"max_pixel_difference": _largest_pixel_difference(images["ours"], images["reference"])},
    )


def run(quick: bool) -> list[Row]:
    repeats, warmup = (1, 1) if quick else (5, 1)
    pipes: dict[str, Any] = {}
    rows = []
    for case in cases(quick):
        if case.model not in pipes:
            pipes[case.model] = _pipeline(case.model)
        rows.append(measure(case, pipes[case.model], repeats=repeats if case.model == "tiny" else 3, warmup=warmup))
    return rows
