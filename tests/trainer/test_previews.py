"""Training previews are PNGs that carry their generation settings, like `onetrainer sample`'s."""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image

from onetrainer.model_loader.pipeline import load_model
from onetrainer.model_sampler.stable_diffusion import StableDiffusionSampler
from onetrainer.trainer.previews import draw_previews
from onetrainer.trainer.tensorboard import TensorBoardLog
from onetrainer.util.config.output import SamplingConfig


def test_previews_record_prompt_seed_steps_and_the_training_step(tmp_path: Path) -> None:
    sampler = StableDiffusionSampler(load_model("tiny:sd15"))
    sampling = SamplingConfig.model_validate(
        {
            "to_tensorboard": False,
            "prompts": [
                {"prompt": "a red circle", "negative_prompt": "blurry", "seed": 5, "steps": 2, "cfg": 4.0},
                {"prompt": "a blue square", "steps": 2, "scheduler": "Euler"},
            ],
        }
    )
    paths = draw_previews(
        sampler,
        sampling,
        step=40,
        resolution=64,
        directory=tmp_path,
        tensorboard=TensorBoardLog(tmp_path / "tb", enabled=False),
        model="tiny:sd15",
    )

    assert [path.name for path in paths] == ["step-00000040-0.png", "step-00000040-1.png"]
    first, second = (Image.open(path).text for path in paths)
    assert first["parameters"] == (
        "a red circle\nNegative prompt: blurry\nSteps: 2, Sampler: DDIM, CFG scale: 4, Seed: 5, Size: 64x64, "
        "Model: tiny:sd15, Training step: 40"
    )
    facts = json.loads(second["onetrainer"])
    assert (facts["prompt"], facts["seed"], facts["steps"], facts["scheduler"], facts["training_step"]) == (
        "a blue square",
        42,
        2,
        "euler",
        40,
    )
