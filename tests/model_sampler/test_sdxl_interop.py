"""SDXL outputs load in diffusers' StableDiffusionXLPipeline and draw what our sampler draws.

Each test saves with the registered saver, loads the file with diffusers' own loader
(`load_lora_weights`, `load_textual_inversion`, `from_single_file`, `from_pretrained`) into a pipeline
built from the same tiny base folder, and compares its image with our sampler's for the same seed.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from onetrainer.model.adapters.embedding import add_embedding
from onetrainer.model.adapters.lora_file import matched_to, read_lora_file
from onetrainer.model.diffusion import DiffusionModel
from onetrainer.model_loader.pipeline import load_model
from onetrainer.model_saver.adapter_files import lora_from_model
from onetrainer.util.enums import TrainingMethod
from onetrainer.util.errors import UserError
from onetrainer.util.registry import ModuleKind, lookup

PROMPT = "a red circle on a blue square"
SETTINGS: dict[str, Any] = {"steps": 3, "cfg": 5.0, "seed": 7, "width": 64, "height": 64}


def _ours(model: DiffusionModel, prompt: str = PROMPT, negative: str = "", scheduler: str = "euler") -> np.ndarray:
    sampler = lookup(ModuleKind.SAMPLER, "sdxl")(model)
    image = sampler.sample(prompt, negative, scheduler=scheduler, **SETTINGS)[0]
    return np.asarray(image).astype(np.int16)


def _theirs(pipe: Any, prompt: str = PROMPT, negative: str | None = None) -> np.ndarray:
    pipe.set_progress_bar_config(disable=True)
    image = pipe(
        prompt,
        negative_prompt=negative,
        num_inference_steps=SETTINGS["steps"],
        guidance_scale=SETTINGS["cfg"],
        width=SETTINGS["width"],
        height=SETTINGS["height"],
        generator=torch.Generator().manual_seed(SETTINGS["seed"]),
    ).images[0]
    return np.asarray(image).astype(np.int16)


def _diffusers(folder: Path) -> Any:
    from diffusers import StableDiffusionXLPipeline

    return StableDiffusionXLPipeline.from_pretrained(folder)


def _save(model: DiffusionModel, output: Path, method: TrainingMethod, fmt: str) -> list[Path]:
    saver = lookup(ModuleKind.SAVER, "sdxl")()
    written: list[Path] = saver.save(model, output, method=method, format=fmt, dtype="fp32")
    return written


def _metadata(path: Path) -> dict[str, str]:
    with safe_open(path, "pt") as handle:
        return dict(handle.metadata() or {})


@pytest.fixture
def base(tiny_sdxl_dir: Path) -> Callable[[], DiffusionModel]:
    return lambda: load_model(tiny_sdxl_dir)


def test_our_sampler_draws_what_diffusers_draws(base: Callable[[], DiffusionModel], tiny_sdxl_dir: Path) -> None:
    model = base()
    assert np.array_equal(_ours(model), _theirs(_diffusers(tiny_sdxl_dir)))
    assert np.array_equal(_ours(model, negative="blurry"), _theirs(_diffusers(tiny_sdxl_dir), negative="blurry"))


@pytest.mark.parametrize("scheduler", ["ddim", "dpm++2m-karras", "unipc"])
def test_every_scheduler_matches_diffusers(
    base: Callable[[], DiffusionModel], tiny_sdxl_dir: Path, scheduler: str
) -> None:
    from onetrainer.model_sampler.schedulers import build_scheduler

    pipe = _diffusers(tiny_sdxl_dir)
    pipe.scheduler = build_scheduler(scheduler, pipe.scheduler.config)
    assert np.array_equal(_ours(base(), scheduler=scheduler), _theirs(pipe))


def test_an_empty_negative_prompt_follows_force_zeros_for_empty_prompt(base: Callable[[], DiffusionModel]) -> None:
    model = base()
    zeros = _ours(model)
    model.pipeline_config["force_zeros_for_empty_prompt"] = False
    assert not np.array_equal(_ours(model), zeros), "an encoded empty prompt differs from zeros"


@pytest.mark.parametrize("fmt", ["kohya", "peft"])
def test_diffusers_loads_our_lora_and_draws_our_image(
    base: Callable[[], DiffusionModel],
    tiny_sdxl_dir: Path,
    tmp_path: Path,
    fmt: str,
    with_random_lora: Callable[..., DiffusionModel],
    lora_deltas: Callable,
) -> None:
    model = with_random_lora(base(), ("unet", "text_encoder", "text_encoder_2"))
    (path,) = _save(model, tmp_path / "lora.safetensors", TrainingMethod.LORA, fmt)
    keys = set(load_file(path))
    if fmt == "kohya":
        assert {key.split("_")[1] for key in keys} == {"unet", "te1", "te2"}
        assert any(key.startswith("lora_unet_input_blocks_3_1_transformer_blocks_1_") for key in keys)
    else:
        assert {key.partition(".")[0] for key in keys} == {"unet", "text_encoder", "text_encoder_2"}
    assert _metadata(path)["modelspec.architecture"] == "stable-diffusion-xl-v1-base/lora"
    loaded, (tensors, alphas, _) = read_lora_file(path, model.spec), lora_from_model(model)
    read, read_alphas = matched_to(model, loaded.tensors, loaded.alphas)  # peft files keep CLIP's `text_model.`
    assert read.keys() == tensors.keys(), "reads back without naming the model: the file records it"
    ours, theirs_deltas = lora_deltas(tensors, alphas), lora_deltas(read, read_alphas)
    assert all(torch.allclose(theirs_deltas[key], delta, rtol=1e-6, atol=0) for key, delta in ours.items())
    pipe = _diffusers(tiny_sdxl_dir)
    pipe.load_lora_weights(str(path.parent), weight_name=path.name)
    ours, theirs = _ours(model), _theirs(pipe)
    assert not np.array_equal(ours, _ours(base())), "the LoRA changes the image"
    assert np.abs(ours - theirs).max() <= 1


def test_diffusers_loads_our_embedding_into_both_encoders(
    base: Callable[[], DiffusionModel], tiny_sdxl_dir: Path, tmp_path: Path
) -> None:
    model = base()
    generator = torch.Generator().manual_seed(1)
    vectors = {
        name: torch.randn(2, model.components[name].get_input_embeddings().weight.shape[1], generator=generator)
        for name in ("text_encoder", "text_encoder_2")
    }
    model.adapters.embeddings.append(add_embedding(model, "<shape>", vectors=vectors, trainable=False))
    (path,) = _save(model, tmp_path / "shape.safetensors", TrainingMethod.EMBEDDING, "a1111")
    state = load_file(path)
    assert set(state) == {"clip_l", "clip_g"}
    assert _metadata(path)["modelspec.architecture"] == "stable-diffusion-xl-v1-base/textual-inversion"
    pipe = _diffusers(tiny_sdxl_dir)
    pipe.load_textual_inversion(
        state["clip_l"], token="<shape>", text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer
    )
    pipe.load_textual_inversion(
        state["clip_g"], token="<shape>", text_encoder=pipe.text_encoder_2, tokenizer=pipe.tokenizer_2
    )
    prompt = "a <shape> on a blue square"
    ours = _ours(model, prompt)
    assert not np.array_equal(ours, _ours(base(), prompt)), "the embedding changes the image"
    # With the released configs' end-token id (2), transformers pools bigG at the largest token id: the
    # placeholder's in diffusers. A1111, ComfyUI, sd-scripts and we pool at the end token (README).
    assert np.abs(ours - _theirs(pipe, prompt)).max() > 1
    for text_encoder, tokenizer in ((pipe.text_encoder, pipe.tokenizer), (pipe.text_encoder_2, pipe.tokenizer_2)):
        getattr(text_encoder, "text_model", text_encoder).eos_token_id = tokenizer.eos_token_id
    assert np.abs(ours - _theirs(pipe, prompt)).max() <= 1


def test_the_diffusers_embedding_layout_is_refused_with_the_way_diffusers_reads_ours(
    base: Callable[[], DiffusionModel], tmp_path: Path
) -> None:
    model = base()
    model.adapters.embeddings.append(add_embedding(model, "<shape>", init_text="circle"))
    with pytest.raises(UserError, match="one") as caught:
        _save(model, tmp_path / "learned_embeds.safetensors", TrainingMethod.EMBEDDING, "diffusers")
    assert "a1111" in (caught.value.hint or "")


def test_single_file_loads_in_from_single_file(
    base: Callable[[], DiffusionModel], tiny_sdxl_dir: Path, tmp_path: Path
) -> None:
    from diffusers import StableDiffusionXLPipeline

    model = base()
    (path,) = _save(model, tmp_path / "model.safetensors", TrainingMethod.FULL, "auto")
    assert _metadata(path)["modelspec.architecture"] == "stable-diffusion-xl-v1-base"
    pipe = StableDiffusionXLPipeline.from_single_file(str(path), config=str(tiny_sdxl_dir), local_files_only=True)
    for name in ("unet", "vae", "text_encoder", "text_encoder_2"):
        theirs, ours = pipe.components[name].state_dict(), model.components[name].state_dict()
        assert theirs.keys() == ours.keys()
        assert all(torch.equal(theirs[key], ours[key]) for key in ours), name
    assert np.abs(_ours(model) - _theirs(pipe)).max() <= 1, "equal weights; only their memory alignment may differ"


def test_diffusers_folder_loads_in_from_pretrained(base: Callable[[], DiffusionModel], tmp_path: Path) -> None:
    model = base()
    (folder,) = _save(model, tmp_path / "model", TrainingMethod.FULL, "diffusers")
    index = json.loads((folder / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionXLPipeline"
    assert index["force_zeros_for_empty_prompt"] is True
    assert index["text_encoder_2"] == ["transformers", "CLIPTextModelWithProjection"]
    # Tensors sit at other offsets than in the tiny folder diffusers wrote, so their memory alignment (and
    # with it the CPU kernel and the last bit of a matmul) may differ: one level of 255 is the tolerance.
    assert np.abs(_ours(model) - _theirs(_diffusers(folder))).max() <= 1


def test_previews_run_on_parts_of_different_dtypes(base: Callable[[], DiffusionModel]) -> None:
    """During training a bf16 UNet sits beside fp32 text encoders and an fp32 (or fp16, upcast) VAE."""
    from onetrainer.model_setup.placement import place

    model = base()
    reference = _ours(model)
    place(model.unet, "cpu", torch.bfloat16)
    place(model.text_encoder, "cpu", torch.bfloat16)
    mixed = _ours(model)
    assert np.abs(mixed - reference).mean() < 2, "bf16 rounding only"
    place(model.vae, "cpu", torch.float16)
    assert model.vae.config.force_upcast
    assert np.abs(_ours(model) - mixed).max() <= 1, "an fp16 VAE that says force_upcast decodes in fp32"
    assert model.vae.dtype == torch.float16, "and is left as it was"
