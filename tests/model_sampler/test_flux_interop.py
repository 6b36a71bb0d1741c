"""FLUX.1 outputs load in diffusers' `FluxPipeline`, which draws what our sampler draws.

At the tiny model's widths diffusers reads our diffusers folders and peft LoRAs; its readers of BFL
layouts (kohya LoRAs, single files) split single blocks at the released width (3072, hard-coded), so
those are checked at that width on thin tensors: the kohya LoRA here, the single file in
`tests/util/test_keymaps_flux.py`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from onetrainer.model.adapters.lora_file import read_lora_file
from onetrainer.model.diffusion import DiffusionModel
from onetrainer.model_loader.pipeline import load_model
from onetrainer.model_saver.adapter_files import lora_from_model, write_lora
from onetrainer.util.config.output import SaveFormat
from onetrainer.util.enums import TrainingMethod
from onetrainer.util.family import get_family
from onetrainer.util.registry import ModuleKind, lookup

PROMPT = "a red circle on a blue square"
SETTINGS: dict[str, Any] = {"steps": 3, "cfg": 3.5, "seed": 7, "width": 64, "height": 48}
T5_LENGTH = {"flux-dev": 512, "flux-schnell": 256}


def _ours(model: DiffusionModel, negative: str = "", scheduler: str = "euler") -> np.ndarray:
    sampler = lookup(ModuleKind.SAMPLER, model.spec.name)(model)
    image = sampler.sample(PROMPT, negative, scheduler=scheduler, **SETTINGS)[0]
    return np.asarray(image).astype(np.int16)


def _theirs(pipe: Any, kind: str, **call: Any) -> np.ndarray:
    image = pipe(
        PROMPT,
        num_inference_steps=SETTINGS["steps"],
        guidance_scale=SETTINGS["cfg"],
        width=SETTINGS["width"],
        height=SETTINGS["height"],
        max_sequence_length=T5_LENGTH[kind],
        generator=torch.Generator().manual_seed(SETTINGS["seed"]),
        **call,
    ).images[0]
    return np.asarray(image).astype(np.int16)


def _diffusers(folder: Path) -> Any:
    from diffusers import FluxPipeline

    pipe = FluxPipeline.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture
def folders(tiny_flux_dev_dir: Path, tiny_flux_schnell_dir: Path) -> dict[str, Path]:
    return {"flux-dev": tiny_flux_dev_dir, "flux-schnell": tiny_flux_schnell_dir}


@pytest.mark.parametrize("kind", ["flux-dev", "flux-schnell"])
def test_our_sampler_draws_what_diffusers_draws(folders: dict[str, Path], kind: str) -> None:
    ours = _ours(load_model(folders[kind]))
    assert ours.shape == (48, 64, 3)
    assert np.array_equal(ours, _theirs(_diffusers(folders[kind]), kind))


@pytest.mark.parametrize("scheduler", ["dpm++2m", "unipc", "deis"])
def test_every_flow_matching_scheduler_matches_diffusers(folders: dict[str, Path], scheduler: str) -> None:
    """The reference swaps the solver as diffusers documents it (`from_config` with flow sigmas)."""
    import diffusers

    from onetrainer.model_sampler.schedulers import SCHEDULERS
    from onetrainer.util.family import Objective

    pipe = _diffusers(folders["flux-dev"])
    class_name, settings = SCHEDULERS[Objective.FLOW_MATCHING][scheduler]
    pipe.scheduler = getattr(diffusers, class_name).from_config(pipe.scheduler.config, **settings)
    assert np.array_equal(_ours(load_model(folders["flux-dev"]), scheduler=scheduler), _theirs(pipe, "flux-dev"))


@pytest.mark.parametrize("scheduler", ["dpm++2m", "deis"])
@pytest.mark.parametrize(("kind", "seq_len"), [("flux-schnell", 16), ("flux-schnell", 4096), ("flux-dev", 16)])
def test_multistep_solvers_shift_as_the_model_does(
    folders: dict[str, Path], scheduler: str, kind: str, seq_len: int
) -> None:
    """diffusers' multistep solvers refuse the pipeline's `mu` without dynamic shifting; ours turn schnell's
    fixed shift into a constant one (shift 1 at any size), and follow dev's resolution-dependent one."""
    import math

    from diffusers.pipelines.flux.pipeline_flux import calculate_shift

    from onetrainer.model_sampler.schedulers import build_scheduler
    from onetrainer.util.family import Objective

    model = load_model(folders[kind])
    solver = build_scheduler(scheduler, model.noise_scheduler.config, Objective.FLOW_MATCHING)
    config = solver.config
    mu = calculate_shift(
        seq_len, config["base_image_seq_len"], config["max_image_seq_len"], config["base_shift"], config["max_shift"]
    )
    solver.set_timesteps(4, mu=mu)
    dev = model.noise_scheduler.config
    expected = (
        math.exp(calculate_shift(seq_len, 256, 4096, dev.base_shift, dev.max_shift)) if kind == "flux-dev" else 1.0
    )
    assert solver.config.flow_shift == pytest.approx(expected)
    assert _ours(model, scheduler=scheduler).std() > 0


def test_true_cfg_with_a_negative_prompt_is_the_pipelines(folders: dict[str, Path]) -> None:
    model = load_model(folders["flux-dev"], options={"true_cfg": 2.5})
    ours = _ours(model, negative="blurry")
    theirs = _theirs(_diffusers(folders["flux-dev"]), "flux-dev", negative_prompt="blurry", true_cfg_scale=2.5)
    assert np.array_equal(ours, theirs)
    assert not np.array_equal(ours, _ours(model)), "without a negative prompt there is no true CFG"


def test_diffusers_loads_our_peft_lora_and_draws_our_image(
    folders: dict[str, Path], tmp_path: Path, with_random_lora: Callable[..., DiffusionModel]
) -> None:
    model = with_random_lora(load_model(folders["flux-dev"]), ("transformer", "text_encoder"))
    saver = lookup(ModuleKind.SAVER, "flux-dev")()
    (path,) = saver.save(model, tmp_path / "lora.safetensors", method=TrainingMethod.LORA, format="peft", dtype="fp32")
    assert {key.partition(".")[0] for key in load_file(path)} == {"transformer", "text_encoder"}
    pipe = _diffusers(folders["flux-dev"])
    pipe.load_lora_weights(str(path.parent), weight_name=path.name)
    ours, theirs = _ours(model), _theirs(pipe, "flux-dev")
    assert not np.array_equal(ours, _ours(load_model(folders["flux-dev"]))), "the LoRA changes the image"
    assert np.abs(ours - theirs).max() <= 1


def test_our_kohya_lora_reads_back_exactly(
    folders: dict[str, Path], tmp_path: Path, with_random_lora: Callable[..., DiffusionModel]
) -> None:
    """The tiny model's block counts differ from the released ones: the file records them."""
    model = with_random_lora(load_model(folders["flux-dev"]), ("transformer", "text_encoder", "text_encoder_2"))
    saver = lookup(ModuleKind.SAVER, "flux-dev")()
    (path,) = saver.save(model, tmp_path / "lora.safetensors", method=TrainingMethod.LORA, dtype="fp32")
    keys = set(load_file(path))
    assert {key.split("_")[1] for key in keys} == {"unet", "te1", "te3"}
    assert "lora_unet_single_blocks_1_linear1.lora_down.weight" in keys
    loaded, (tensors, alphas, _) = read_lora_file(path, model.spec), lora_from_model(model)
    assert loaded.tensors.keys() == tensors.keys()
    assert all(torch.equal(loaded.tensors[key], tensors[key]) for key in tensors)
    assert loaded.alphas == alphas


def test_a_onetrainer_flux_lora_reads_as_the_layers_it_names(
    folders: dict[str, Path],
    tmp_path: Path,
    with_random_lora: Callable[..., DiffusionModel],
    lora_deltas: Callable[..., dict[str, torch.Tensor]],
) -> None:
    """OneTrainer names FLUX.1 layers by diffusers' paths (`lora_transformer_transformer_blocks_0_attn_to_q`, T5
    under `lora_te2_`), as ComfyUI maps them: read into the same layers, with their alphas."""
    from safetensors.torch import save_file

    from onetrainer.model.adapters.lora_file import matched_to
    from onetrainer.model.adapters.lora_merge import merge_lora
    from onetrainer.util.keymaps.lora import split_peft_key

    model = with_random_lora(load_model(folders["flux-dev"]), ("transformer", "text_encoder", "text_encoder_2"))
    tensors, alphas, _ = lora_from_model(model)
    prefixes = {
        "transformer": "lora_transformer_",
        "text_encoder": "lora_te1_text_model_",
        "text_encoder_2": "lora_te2_",
    }
    names = {"lora_A.weight": "lora_down.weight", "lora_B.weight": "lora_up.weight"}
    onetrainer: dict[str, torch.Tensor] = {}
    for key, tensor in tensors.items():
        module, param = split_peft_key(key)
        component, _, path = module.partition(".")
        name = prefixes[component] + path.removeprefix("text_model.").replace(".", "_")
        onetrainer[f"{name}.{names[param]}"] = tensor.contiguous()
        onetrainer[f"{name}.alpha"] = torch.tensor(alphas[module])
    assert any(key.startswith("lora_transformer_single_transformer_blocks_0_proj_mlp.") for key in onetrainer)
    path = tmp_path / "onetrainer-flux.safetensors"
    save_file(onetrainer, path)

    loaded = read_lora_file(path, model.spec)
    read, read_alphas = matched_to(model, loaded.tensors, loaded.alphas)
    assert read.keys() == tensors.keys()
    assert all(torch.equal(read[key], tensors[key]) for key in tensors)
    assert read_alphas == pytest.approx(alphas)
    base, merged = load_model(folders["flux-dev"]), load_model(folders["flux-dev"])
    assert merge_lora(merged, loaded) == len(lora_deltas(tensors, alphas))  # `sample --lora` applies every layer
    for module, delta in lora_deltas(tensors, alphas).items():
        component, _, path = module.partition(".")
        before = base.components[component].get_submodule(path).weight
        after = merged.components[component].get_submodule(path).weight
        torch.testing.assert_close(after - before, delta.reshape(before.shape), rtol=1e-5, atol=1e-6)


def test_diffusers_converts_our_kohya_lora_to_the_same_weights_at_the_released_width(tmp_path: Path) -> None:
    """What `FluxPipeline.load_lora_weights` makes of our kohya file of a released-size model: the same
    weight update of every layer (diffusers bakes alpha / rank into the factors)."""
    from diffusers import FluxPipeline

    width, generator = 3072, torch.Generator().manual_seed(0)
    layers = {
        **{f"transformer.transformer_blocks.0.attn.{p}": width for p in ("to_q", "to_k", "to_v", "add_k_proj")},
        **{f"transformer.single_transformer_blocks.3.attn.to_{p}": width for p in "qkv"},
        "transformer.single_transformer_blocks.3.proj_mlp": 4 * width,
        "transformer.transformer_blocks.2.ff.net.2": width,
    }
    tensors: dict[str, torch.Tensor] = {}
    for layer, out in layers.items():
        tensors[f"{layer}.lora_A.weight"] = torch.randn(2, width, generator=generator)
        tensors[f"{layer}.lora_B.weight"] = torch.randn(out, 2, generator=generator)
    alphas = dict.fromkeys(layers, 3.0)
    path = write_lora(
        tmp_path / "l.safetensors", tensors, alphas, fmt=SaveFormat.KOHYA, spec=get_family("flux-dev"), kind="lora",
        metadata={},
    )  # fmt: skip
    theirs = FluxPipeline.lora_state_dict(str(path))
    for layer in layers:
        ours = 3.0 / 2 * tensors[f"{layer}.lora_B.weight"] @ tensors[f"{layer}.lora_A.weight"]
        converted = theirs[f"{layer}.lora_B.weight"].float() @ theirs[f"{layer}.lora_A.weight"].float()
        torch.testing.assert_close(converted, ours, rtol=1e-4, atol=1e-4)
    absent = theirs.get("transformer.transformer_blocks.0.attn.add_q_proj.lora_B.weight")
    assert absent is not None
    assert not absent.any(), "a part without a LoRA is a zero block of the fused layer"
