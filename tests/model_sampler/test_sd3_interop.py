"""SD 3 / 3.5 outputs load in diffusers' `StableDiffusion3Pipeline`, which draws what our sampler draws.

At the tiny models' widths diffusers reads our diffusers folders, our peft LoRAs (transformer and both
CLIP encoders) and our single files (`from_single_file` with the folder as its config); it reads no
kohya SD 3 LoRA, which ComfyUI reads (`tests/util/test_keymaps_sd3.py`). A model without T5 samples
as the pipeline does without `text_encoder_3`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from onetrainer.model.diffusion import DiffusionModel
from onetrainer.model_loader.pipeline import load_model
from onetrainer.util.enums import TrainingMethod
from onetrainer.util.registry import ModuleKind, lookup

PROMPT = "a red circle on a blue square"
SETTINGS: dict[str, Any] = {"steps": 3, "cfg": 4.5, "seed": 7, "width": 64, "height": 48}
KINDS = ("sd35-large", "sd35-medium", "sd3-medium")


def _ours(model: DiffusionModel, negative: str = "", scheduler: str = "euler", **settings: Any) -> np.ndarray:
    sampler = lookup(ModuleKind.SAMPLER, model.spec.name)(model)
    image = sampler.sample(PROMPT, negative, scheduler=scheduler, **{**SETTINGS, **settings})[0]
    return np.asarray(image).astype(np.int16)


def _theirs(pipe: Any, **call: Any) -> np.ndarray:
    settings = {"guidance_scale": SETTINGS["cfg"], **call}
    image = pipe(
        PROMPT,
        num_inference_steps=SETTINGS["steps"],
        width=SETTINGS["width"],
        height=SETTINGS["height"],
        generator=torch.Generator().manual_seed(SETTINGS["seed"]),
        **settings,
    ).images[0]
    return np.asarray(image).astype(np.int16)


def _diffusers(source: Path, **parts: Any) -> Any:
    from diffusers import StableDiffusion3Pipeline

    pipe = StableDiffusion3Pipeline.from_pretrained(source, local_files_only=True, **parts)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture
def folders(tiny_sd35_large_dir: Path, tiny_sd35_medium_dir: Path, tiny_sd3_medium_dir: Path) -> dict[str, Path]:
    return {"sd35-large": tiny_sd35_large_dir, "sd35-medium": tiny_sd35_medium_dir, "sd3-medium": tiny_sd3_medium_dir}


@pytest.mark.parametrize("kind", KINDS)
def test_our_sampler_draws_what_diffusers_draws(folders: dict[str, Path], kind: str) -> None:
    ours = _ours(load_model(folders[kind]))
    assert ours.shape == (48, 64, 3)
    assert np.array_equal(ours, _theirs(_diffusers(folders[kind])))


def test_a_negative_prompt_and_cfg_1_are_the_pipelines(folders: dict[str, Path]) -> None:
    model, pipe = load_model(folders["sd35-large"]), _diffusers(folders["sd35-large"])
    negative = _ours(model, negative="blurry")
    assert np.array_equal(negative, _theirs(pipe, negative_prompt="blurry"))
    assert not np.array_equal(negative, _ours(model)), "the negative prompt changes the image"
    assert np.array_equal(_ours(model, cfg=1.0), _theirs(pipe, guidance_scale=1.0))


@pytest.mark.parametrize("scheduler", ["dpm++2m", "unipc"])
def test_flow_matching_solvers_match_diffusers(folders: dict[str, Path], scheduler: str) -> None:
    """The reference swaps the solver as diffusers documents it (`from_config` with flow sigmas and the
    model's shift as `flow_shift`); ours applies the same shift of 3 as a constant dynamic one."""
    import diffusers

    from onetrainer.model_sampler.schedulers import SCHEDULERS
    from onetrainer.util.family import Objective

    pipe = _diffusers(folders["sd35-medium"])
    class_name, settings = SCHEDULERS[Objective.FLOW_MATCHING][scheduler]
    shift = pipe.scheduler.config.shift
    assert shift == 3.0
    pipe.scheduler = getattr(diffusers, class_name).from_config(pipe.scheduler.config, flow_shift=shift, **settings)
    assert np.array_equal(_ours(load_model(folders["sd35-medium"]), scheduler=scheduler), _theirs(pipe))


def test_skip_layer_guidance_of_35_medium_is_the_pipelines(folders: dict[str, Path]) -> None:
    """The tiny MMDiT-X has two blocks: the second is skipped, on every step but the first (the pipeline
    applies it on steps strictly after `start` and before `stop`)."""
    options = {
        "skip_layer_guidance": 2.5,
        "skip_layer_guidance_layers": [1],
        "skip_layer_guidance_start": 0.0,
        "skip_layer_guidance_stop": 1.0,
    }
    model = load_model(folders["sd35-medium"], options=options)
    guided = _ours(model)
    theirs = _theirs(
        _diffusers(folders["sd35-medium"]),
        skip_guidance_layers=[1],
        skip_layer_guidance_scale=2.5,
        skip_layer_guidance_start=0.0,
        skip_layer_guidance_stop=1.0,
    )
    assert np.array_equal(guided, theirs)
    assert not np.array_equal(guided, _ours(load_model(folders["sd35-medium"]))), "skip-layer guidance acts"


@pytest.mark.parametrize("kind", ["sd35-large", "sd3-medium"])
def test_without_t5_we_draw_what_the_pipeline_draws_without_text_encoder_3(folders: dict[str, Path], kind: str) -> None:
    model = load_model(folders[kind], options={"t5": False})
    assert "text_encoder_3" not in model.components
    ours = _ours(model)
    assert np.array_equal(ours, _theirs(_diffusers(folders[kind], text_encoder_3=None, tokenizer_3=None)))
    assert not np.array_equal(ours, _ours(load_model(folders[kind]))), "T5's tokens change the image"


@pytest.mark.parametrize("kind", KINDS)
def test_diffusers_loads_our_peft_lora_and_draws_our_image(
    folders: dict[str, Path], kind: str, tmp_path: Path, with_random_lora: Callable[..., DiffusionModel]
) -> None:
    """Our default SD 3 LoRA layout is peft, diffusers' own keys: `load_lora_weights` takes the transformer's
    and both CLIP encoders' adapters (3.5 Medium's second attention too)."""
    parts = ("transformer", "text_encoder", "text_encoder_2")
    model = with_random_lora(load_model(folders[kind]), parts)
    saver = lookup(ModuleKind.SAVER, kind)()
    (path,) = saver.save(model, tmp_path / "lora.safetensors", method=TrainingMethod.LORA, dtype="fp32")
    keys = set(load_file(path))
    assert {key.partition(".")[0] for key in keys} == set(parts)
    assert any(".attn2." in key for key in keys) == (kind == "sd35-medium")
    pipe = _diffusers(folders[kind])
    pipe.load_lora_weights(str(path.parent), weight_name=path.name)
    ours, theirs = _ours(model), _theirs(pipe)
    assert not np.array_equal(ours, _ours(load_model(folders[kind]))), "the LoRA changes the image"
    assert np.abs(ours - theirs).max() <= 1


@pytest.mark.parametrize("kind", KINDS)
def test_diffusers_from_single_file_loads_our_file_and_draws_our_image(
    folders: dict[str, Path], kind: str, tmp_path: Path
) -> None:
    """diffusers holds exactly our tensors; it leaves them where the file maps them, some of them off a 64-byte
    boundary (our reader copies those), so on AVX-512 CPUs a last bit may differ: a pixel by one at most.
    diffusers 0.42's `from_single_file` leaves T5 in training mode (dropout on): the reference is put in
    eval mode, as `from_pretrained` leaves it."""
    from diffusers import StableDiffusion3Pipeline

    model = load_model(folders[kind])
    saver = lookup(ModuleKind.SAVER, kind)()
    (path,) = saver.save(model, tmp_path / "model.safetensors", method=TrainingMethod.FULL, dtype="fp32")
    keys = set(load_file(path))
    assert any(key.startswith("model.diffusion_model.joint_blocks.1.") for key in keys)
    assert {key.split(".")[1] for key in keys if key.startswith("text_encoders.")} == {"clip_l", "clip_g", "t5xxl"}
    pipe = StableDiffusion3Pipeline.from_single_file(str(path), config=str(folders[kind]), local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    pipe.text_encoder_3.eval()
    theirs = DiffusionModel.from_pipeline(pipe, model.spec, source=str(path))
    for name, module in model.modules():
        expected, loaded = module.state_dict(), theirs.components[name].state_dict()
        assert sorted(loaded) == sorted(expected), name
        assert all(torch.equal(loaded[key], tensor) for key, tensor in expected.items()), name
    ours = _ours(model)
    assert np.abs(ours - _theirs(pipe)).max() <= 1
    assert np.array_equal(_ours(load_model(path, config=str(folders[kind]))), ours), "our reader is exact"


def test_our_single_file_without_t5_reads_back_without_it(folders: dict[str, Path], tmp_path: Path) -> None:
    """A model loaded without T5 writes a file without `text_encoders.t5xxl`, as Stability's files without
    encoders; it loads back T5-less and draws the same image."""
    model = load_model(folders["sd35-large"], options={"t5": False})
    saver = lookup(ModuleKind.SAVER, "sd35-large")()
    (path,) = saver.save(model, tmp_path / "model.safetensors", method=TrainingMethod.FULL, dtype="fp32")
    assert not any(key.startswith("text_encoders.t5xxl.") for key in load_file(path))
    loaded = load_model(path, config=str(folders["sd35-large"]), options={"t5": False})
    assert "text_encoder_3" not in loaded.components
    assert np.array_equal(_ours(loaded), _ours(model))
