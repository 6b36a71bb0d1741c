"""LoRA files: kohya and peft round trips, and diffusers' `load_lora_weights` reading what we write."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from onetrainer.model.adapters.lora_file import matched_to, read_lora_file
from onetrainer.model_saver.adapter_files import lora_from_model
from onetrainer.model_saver.diffusion import DiffusionSaver
from onetrainer.util.enums import TrainingMethod
from onetrainer.util.errors import UserError
from onetrainer.util.family import get_family


def _save(model, path: Path, fmt: str, dtype: str | None = None) -> Path:
    return DiffusionSaver().save(model, path, method=TrainingMethod.LORA, format=fmt, dtype=dtype)[0]


def _header(path: Path) -> tuple[list[str], dict[str, str]]:
    with safe_open(str(path), "pt") as handle:
        return list(handle.keys()), dict(handle.metadata() or {})


@pytest.mark.parametrize(
    ("kind", "fmt"),
    [("lora", "kohya"), ("lora", "peft"), ("dora", "kohya"), ("dora", "peft"), ("loha", "kohya"), ("lokr", "kohya")],
)
def test_round_trip_gives_identical_tensors_and_alphas(
    lora_model: Callable, lora_deltas: Callable, tmp_path: Path, kind: str, fmt: str
) -> None:
    model = lora_model(kind, fmt=fmt)
    tensors, alphas, saved_kind = lora_from_model(model)
    path = _save(model, tmp_path / f"{kind}.safetensors", fmt)
    loaded = read_lora_file(path, get_family("sd15"))
    assert saved_kind == loaded.kind == kind
    if fmt == "peft":  # CLIP layers under `text_model.` whatever transformers is installed (ComfyUI maps only those)
        assert any(key.startswith("text_encoder.text_model.encoder.layers.") for key in loaded.tensors)
    loaded_tensors, loaded_alphas = matched_to(model, loaded.tensors, loaded.alphas)
    assert loaded_tensors.keys() == tensors.keys()
    if fmt == "kohya":
        assert all(torch.equal(loaded_tensors[k], tensors[k]) for k in tensors)
        assert loaded_alphas == pytest.approx(alphas)
        return
    # the peft layout carries each scale in the up factor (alpha = rank): the same weights
    assert set(loaded_alphas.values()) == {4.0}
    ours, theirs = lora_deltas(tensors, alphas), lora_deltas(loaded_tensors, loaded_alphas)
    assert all(torch.allclose(theirs[module], delta, rtol=1e-6, atol=0) for module, delta in ours.items())


def test_kohya_layout_and_metadata(lora_model: Callable, tmp_path: Path) -> None:
    keys, metadata = _header(_save(lora_model("lora"), tmp_path / "style.safetensors", "auto"))
    name = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
    assert {f"{name}.lora_down.weight", f"{name}.lora_up.weight", f"{name}.alpha"} <= set(keys)
    assert "lora_te_text_model_encoder_layers_0_self_attn_q_proj.alpha" in keys
    assert metadata["modelspec.architecture"] == "stable-diffusion-v1/lora"
    assert metadata["modelspec.title"] == "style"
    assert (metadata["ss_network_module"], metadata["ss_network_dim"], metadata["ss_network_alpha"]) == (
        "networks.lora",
        "4",
        "8.0",
    )
    assert metadata["ss_base_model_version"] == "sd_v1"


def test_lycoris_kinds_name_their_algorithm(lora_model: Callable, tmp_path: Path) -> None:
    keys, metadata = _header(_save(lora_model("loha"), tmp_path / "loha.safetensors", "kohya"))
    assert any(key.endswith(".hada_w1_a") for key in keys)
    assert (metadata["ss_network_module"], metadata["ss_network_args"]) == ("lycoris.kohya", '{"algo": "loha"}')


def test_a_kohya_dora_says_it_normalises_per_input_column(lora_model: Callable, tmp_path: Path) -> None:
    keys, metadata = _header(_save(lora_model("dora"), tmp_path / "dora.safetensors", "kohya"))
    assert any(key.endswith(".dora_scale") for key in keys)
    assert json.loads(metadata["ss_network_args"]) == {"algo": "lora", "dora_wd": "True", "wd_on_out": "False"}


def test_loha_cannot_be_saved_for_diffusers(lora_model: Callable, tmp_path: Path) -> None:
    with pytest.raises(UserError, match="LOHA cannot be saved in the peft layout"):
        _save(lora_model("loha"), tmp_path / "loha.safetensors", "peft")


def test_output_dtype_applies_to_every_tensor_but_the_alphas(lora_model: Callable, tmp_path: Path) -> None:
    """Loaders scale by the alpha stored: in bf16 an alpha of 0.3 would load as 0.30078."""
    path = _save(lora_model("lora"), tmp_path / "half.safetensors", "kohya", dtype="bf16")
    with safe_open(str(path), "pt") as handle:
        dtypes = {key: handle.get_tensor(key).dtype for key in handle.keys()}  # noqa: SIM118
    assert {dtype for key, dtype in dtypes.items() if not key.endswith(".alpha")} == {torch.bfloat16}
    assert {dtype for key, dtype in dtypes.items() if key.endswith(".alpha")} == {torch.float32}


@pytest.mark.parametrize(("kind", "fmt"), [("lora", "kohya"), ("lora", "peft"), ("dora", "peft")])
def test_diffusers_load_lora_weights_reproduces_our_model(
    lora_model: Callable, prediction: Callable, tiny_sd15_dir: Path, tmp_path: Path, kind: str, fmt: str
) -> None:
    from diffusers import StableDiffusionPipeline

    model = lora_model(kind, fmt=fmt)
    path = _save(model, tmp_path / "lora.safetensors", fmt)
    pipe = StableDiffusionPipeline.from_pretrained(tiny_sd15_dir, safety_checker=None, feature_extractor=None)
    reference = prediction(pipe.unet, pipe.text_encoder, pipe.tokenizer)
    pipe.load_lora_weights(str(path.parent), weight_name=path.name)
    ours = prediction(model.unet, model.text_encoder, model.tokenizer)
    assert not torch.allclose(ours, reference, atol=1e-3)  # the adapter changes the output ...
    torch.testing.assert_close(prediction(pipe.unet, pipe.text_encoder, pipe.tokenizer), ours, rtol=0, atol=1e-6)


def test_diffusers_pipeline_draws_the_image_our_sampler_draws(
    lora_model: Callable, tiny_sd15_dir: Path, tmp_path: Path
) -> None:
    import numpy as np
    from diffusers import StableDiffusionPipeline

    from onetrainer.model_sampler.schedulers import build_scheduler
    from onetrainer.model_sampler.stable_diffusion import StableDiffusionSampler

    model = lora_model("lora")
    ours = StableDiffusionSampler(model).sample("a photo of a cat", steps=4, cfg=5.0, seed=7, scheduler="ddim")[0]
    pipe = StableDiffusionPipeline.from_pretrained(tiny_sd15_dir, safety_checker=None, feature_extractor=None)
    path = _save(model, tmp_path / "lora.safetensors", "kohya")
    pipe.load_lora_weights(str(path.parent), weight_name=path.name)
    pipe.scheduler = build_scheduler("ddim", pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    theirs = pipe(
        "a photo of a cat",
        num_inference_steps=4,
        guidance_scale=5.0,
        generator=torch.Generator().manual_seed(7),
        height=64,
        width=64,
    ).images[0]
    difference = np.abs(np.asarray(ours, dtype=np.int16) - np.asarray(theirs, dtype=np.int16))
    assert difference.max() <= 1


@pytest.mark.parametrize("kind", ["loha", "lokr"])
def test_diffusers_refuses_our_lycoris_files_as_the_readme_says(
    lora_model: Callable, readme_loads_in: Callable, tiny_sd15_dir: Path, tmp_path: Path, kind: str
) -> None:
    from diffusers import StableDiffusionPipeline

    path = _save(lora_model(kind), tmp_path / f"{kind}.safetensors", "kohya")
    pipe = StableDiffusionPipeline.from_pretrained(tiny_sd15_dir, safety_checker=None, feature_extractor=None)
    with pytest.raises(ValueError, match="have not been correctly renamed"):
        pipe.load_lora_weights(str(path.parent), weight_name=path.name)
    loads_in = readme_loads_in("LoHa, LoKr", "kohya")
    assert "load_lora_weights" not in loads_in
    assert "diffusers refuses them" in loads_in


@pytest.mark.parametrize("kind", ["lora", "dora"])
def test_a_peft_file_computes_its_weights_without_reading_an_alpha(
    lora_model: Callable, lora_deltas: Callable, tmp_path: Path, kind: str
) -> None:
    """ComfyUI and A1111 read no alpha from the peft layout (only `.alpha` tensors, which diffusers refuses in
    it) and apply `lora_B @ lora_A` at scale 1: the file carries each scale in `lora_B`, so a LoRA of alpha 8,
    rank 4 loads at its strength there, not at half of it."""
    from safetensors.torch import load_file

    from onetrainer.util.keymaps.lora_peft import from_diffusers_keys

    model = lora_model(kind, fmt="peft")
    tensors, alphas, _ = lora_from_model(model)
    assert set(alphas.values()) == {8.0}
    raw = from_diffusers_keys(load_file(_save(model, tmp_path / "lora.safetensors", "peft")))
    assert not any(key.endswith(".alpha") for key in raw)
    raw, _ = matched_to(model, raw, {})
    at_scale_one = lora_deltas(raw, {})
    for module, delta in lora_deltas(tensors, alphas).items():
        torch.testing.assert_close(at_scale_one[module], delta, rtol=1e-6, atol=0)


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        ({"unet.use_rslora": True}, lambda path: 4.0 * 2.0),  # scale alpha / sqrt(rank): alpha 4, rank 4 -> 8 / 4
        ({"unet.alpha_pattern": {"to_q": 16}}, lambda path: 16.0 if path.endswith(".to_q") else 4.0),
        ({"unet.alpha_pattern": {r"attn1\.to_.*": 2}}, lambda path: 2.0 if ".attn1.to_" in path else 4.0),
    ],
)
def test_a_diffusers_files_lora_config_sets_the_scale_as_peft_reads_it(
    lora_model: Callable, tmp_path: Path, settings: dict, expected: Callable[[str], float]
) -> None:
    """peft matches `alpha_pattern` keys as regexes over a layer path's end, and rsLoRA scales by alpha /
    sqrt(rank); a file from another trainer that uses either must load at the strength diffusers gives it."""
    from safetensors.torch import load_file, save_file

    from onetrainer.util.keymaps.lora_peft import DIFFUSERS_METADATA_KEY

    path = _save(lora_model("lora", fmt="peft"), tmp_path / "ours.safetensors", "peft")
    _, metadata = _header(path)
    config = json.loads(metadata[DIFFUSERS_METADATA_KEY])
    config.update({"unet.lora_alpha": 4, "unet.alpha_pattern": {}, **settings})
    theirs = tmp_path / "theirs.safetensors"
    save_file(load_file(path), theirs, {**metadata, DIFFUSERS_METADATA_KEY: json.dumps(config)})
    alphas = read_lora_file(theirs, get_family("sd15")).alphas
    unet = {module: alpha for module, alpha in alphas.items() if module.startswith("unet.")}
    assert unet
    assert all(alpha == pytest.approx(expected(module)) for module, alpha in unet.items()), unet


def test_a_lycoris_loha_with_weight_decomposition_is_refused_by_name(lora_model: Callable, tmp_path: Path) -> None:
    from safetensors.torch import load_file

    from onetrainer.util.keymaps.lora import kohya_to_peft

    tensors = load_file(_save(lora_model("loha"), tmp_path / "loha.safetensors", "kohya"))
    name = next(key for key in tensors if key.endswith("attn1_to_q.hada_w1_a")).removesuffix(".hada_w1_a")
    tensors[f"{name}.dora_scale"] = torch.ones(1, tensors[f"{name}.hada_w1_b"].shape[1])  # LyCORIS' dora_wd
    with pytest.raises(UserError, match=r"weight decomposition \(DoRA\) on a LoHa or LoKr is not supported"):
        kohya_to_peft(tensors, get_family("sd15").lora_naming)


@pytest.mark.parametrize("family", ["sd15", "sd2", "sdxl"])
def test_a_peft_unet_lora_is_said_to_lose_its_attention_in_comfyui(family: str) -> None:
    """ComfyUI maps a UNet's q/k/v/out from diffusers' old `processor.to_q` names only (comfy/lora.py)."""
    (warning,) = get_family(family).peft_warnings(["unet", "text_encoder"], "saving.format: peft")
    assert warning.startswith("saving.format: peft: the UNet's LoRA is written under peft keys (unet.*)")
    assert "kohya is the layout in which it loads in ComfyUI" in warning
    assert get_family(family).auto_lora_format_for(["unet"]) == "kohya"
