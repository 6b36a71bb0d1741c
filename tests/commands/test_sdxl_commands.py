"""`train`, `sample`, `convert` and `inspect` for SDXL through the CLI, with no SDXL-only flags."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from PIL import Image
from safetensors.torch import load_file, save_file

from onetrainer.util.config.presets import presets_dir
from onetrainer.util.safetensors_meta import read_safetensors_header

MODEL = {"type": "sdxl", "base": "tiny:sdxl"}


@pytest.fixture(scope="module")
def lora(train_tiny_run: Callable[..., Any]) -> Path:
    """A LoRA trained on the UNet and both text encoders, with a preview before training."""
    parts = {"text_encoder": {"train": True}, "text_encoder_2": {"train": True}}
    run = train_tiny_run("sdxl-lora", MODEL, "lora", "lora.safetensors", "sampling.before_training=true", parts=parts)
    assert sorted(p.name for p in (run.root / "workspace" / "samples").iterdir()) == ["step-00000000-0.png"]
    return run.saved


@pytest.fixture(scope="module")
def full(train_tiny_run: Callable[..., Any]) -> Path:
    return train_tiny_run("sdxl-full", MODEL, "full", "model.safetensors").saved


@pytest.fixture(scope="module")
def embedding(train_tiny_run: Callable[..., Any], shapes_dataset_dir: Path) -> Path:
    concept = {"path": str(shapes_dataset_dir), "caption": {"prefix": "<shape> "}}
    embedding = {"placeholder": "<shape>", "vectors": 2, "init_text": "shape"}
    run = train_tiny_run(
        "sdxl-embedding", MODEL, "embedding", "shape.safetensors", f"data.concepts=[{concept}]", embedding=embedding
    )
    return run.saved


def test_lora_run_writes_sd_scripts_names_for_all_three_parts(lora: Path) -> None:
    modules = {key.partition(".")[0] for key in load_file(lora)}
    assert any(name.startswith("lora_unet_input_blocks_3_1_transformer_blocks_") for name in modules)
    assert any(name.startswith("lora_te1_text_model_encoder_layers_") for name in modules)
    assert any(name.startswith("lora_te2_text_model_encoder_layers_") for name in modules)
    metadata, _ = read_safetensors_header(lora)
    assert metadata["modelspec.architecture"] == "stable-diffusion-xl-v1-base/lora"
    assert metadata["ss_base_model_version"] == "sdxl_base_v1-0"


def test_full_run_writes_an_sgm_single_file(full: Path) -> None:
    keys = set(load_file(full))
    assert "conditioner.embedders.1.model.text_projection" in keys
    assert "model.diffusion_model.label_emb.0.0.weight" in keys
    assert read_safetensors_header(full)[0]["modelspec.architecture"] == "stable-diffusion-xl-v1-base"


def test_embedding_run_writes_one_vector_set_per_encoder(embedding: Path) -> None:
    vectors = load_file(embedding)
    assert {key: tuple(value.shape) for key, value in vectors.items()} == {"clip_l": (2, 32), "clip_g": (2, 64)}
    assert read_safetensors_header(embedding)[0]["modelspec.trigger_phrase"] == "<shape>"


def test_sample_with_the_trained_lora_and_embedding(
    lora: Path, embedding: Path, tiny_sdxl_dir: Path, tmp_path: Path, cli: Callable[..., Any]
) -> None:
    output = tmp_path / "image.png"
    result = cli(
        "sample",
        tiny_sdxl_dir,
        "-p",
        "a shape circle",
        "--lora",
        f"{lora}:0.8",
        "--embedding",
        embedding,
        "--steps",
        2,
        "--width",
        64,
        "--height",
        72,
        "--scheduler",
        "euler-a",
        "-o",
        output,
    )
    assert result.exit_code == 0, result.output
    with Image.open(output) as image:
        assert image.size == (64, 72), "sample sizes are multiples of 8, not of the 64 px bucket step"


def test_convert_single_file_to_a_folder_and_back(full: Path, tmp_path: Path, cli: Callable[..., Any]) -> None:
    folder = tmp_path / "folder"
    result = cli("convert", full, folder, "--config", "tiny:sdxl")
    assert result.exit_code == 0, result.output
    assert (folder / "tokenizer_2" / "tokenizer_config.json").is_file()
    back = tmp_path / "back.safetensors"
    result = cli("convert", folder, back)
    assert result.exit_code == 0, result.output
    original, again = load_file(full), load_file(back)
    assert original.keys() == again.keys()
    assert all(torch.equal(original[key], again[key]) for key in original)


def test_convert_kohya_lora_to_peft_and_back(lora: Path, tmp_path: Path, cli: Callable[..., Any]) -> None:
    """Our tiny model's kohya names follow its block counts, which the file records: no --config needed."""
    assert "onetrainer_architecture" in read_safetensors_header(lora)[0]
    peft = tmp_path / "peft.safetensors"
    result = cli("convert", lora, peft, "--to", "peft")
    assert result.exit_code == 0, result.output
    assert {key.partition(".")[0] for key in load_file(peft)} == {"unet", "text_encoder", "text_encoder_2"}
    kohya = tmp_path / "kohya.safetensors"
    result = cli("convert", peft, kohya, "--to", "kohya")
    assert result.exit_code == 0, result.output
    original, again = load_file(lora), load_file(kohya)
    assert original.keys() == again.keys()
    assert all(torch.equal(original[key], again[key]) for key in original)


def test_a_kohya_lora_of_another_architecture_needs_config(lora: Path, tmp_path: Path, cli: Callable[..., Any]) -> None:
    """A file that does not record its architecture is read with the released SDXL UNet's names."""
    bare = tmp_path / "bare.safetensors"
    save_file(load_file(lora), bare, metadata={"ss_base_model_version": "sdxl_base_v1-0"})
    result = cli("convert", bare, tmp_path / "peft.safetensors", "--to", "peft")
    assert result.exit_code == 2
    assert "not a module of this SDXL UNet" in " ".join(result.output.replace("│", " ").split())
    result = cli("convert", bare, tmp_path / "peft.safetensors", "--to", "peft", "--config", "tiny:sdxl")
    assert result.exit_code == 0, result.output


def test_inspect_names_sdxl(lora: Path, full: Path, embedding: Path, cli: Callable[..., Any]) -> None:
    for path in (lora, full, embedding):
        result = cli("inspect", path)
        assert result.exit_code == 0, result.output
        assert "SDXL" in result.output


@pytest.mark.parametrize("name", ["sdxl-lora", "sdxl-full", "sdxl-embedding"])
def test_presets_pass_check_as_shipped(name: str, cli: Callable[..., Any]) -> None:
    result = cli("train", presets_dir() / f"{name}.yaml", "--check")
    assert result.exit_code == 0, result.output
    resolved = yaml.safe_load(result.output)
    assert (resolved["model"]["type"], resolved["data"]["resolution"]) == ("sdxl", 1024)
    assert resolved["parts"]["vae"]["weight_dtype"] in ("fp32", "bf16")


def test_a_lora_on_part_of_bigg_attention_is_warned_about_before_training(train_tiny_run: Callable[..., Any]) -> None:
    """A1111 would load the saved file and silently skip those layers (see `Component.lora_all_or_none`)."""
    import json

    parts = {"text_encoder_2": {"train": True, "lora_regex": r"self_attn\.(q_proj|v_proj)$"}}
    run = train_tiny_run("sdxl-qv", MODEL, "lora", "qv.safetensors", "--json", parts=parts)
    events = [json.loads(line) for line in run.result.stdout.splitlines() if line.startswith("{")]
    said = [i for i, event in enumerate(events) if "lora_regex" in str(event.get("message"))]
    assert len(said) == 1
    warning = events[said[0]]
    assert warning["event"] == "warning"
    bigg = "parts.text_encoder_2.lora_regex: 2 attention layers of the OpenCLIP ViT-bigG text encoder adapt only some"
    assert bigg in warning["message"]
    assert said[0] < next(i for i, event in enumerate(events) if event["event"] == "step"), "said before training"
    assert any(key.startswith("lora_te2_") and "_q_proj." in key for key in load_file(run.saved))
