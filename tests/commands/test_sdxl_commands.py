"""`train`, `sample`, `convert` and `inspect` for SDXL through the CLI, with no SDXL-only flags."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from onetrainer.commands.app import app
from onetrainer.util.config.presets import presets_dir
from onetrainer.util.tiny.runs import write_run_config

runner = CliRunner()


def _invoke(*args: object) -> object:
    return runner.invoke(app, [str(arg) for arg in args], terminal_width=200)


def _config(root: Path, dataset: Path, method: str, output: str, **extra: object) -> Path:
    return write_run_config(root, dataset, {"type": "sdxl", "base": "tiny:sdxl"}, method, output, **extra)


def _metadata(path: Path) -> dict[str, str]:
    with safe_open(path, "pt") as handle:
        return dict(handle.metadata() or {})


@pytest.fixture(scope="module")
def lora(tmp_path_factory: pytest.TempPathFactory, shapes_dataset_dir: Path) -> Path:
    """A LoRA trained on the UNet and both text encoders, with a preview before training."""
    root = tmp_path_factory.mktemp("sdxl-lora")
    parts = {"text_encoder": {"train": True}, "text_encoder_2": {"train": True}}
    config = _config(root, shapes_dataset_dir, "lora", "lora.safetensors", parts=parts)
    result = _invoke("train", config, "sampling.before_training=true")
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (root / "workspace" / "samples").iterdir()) == ["step-00000000-0.png"]
    return root / "out" / "lora.safetensors"


@pytest.fixture(scope="module")
def full(tmp_path_factory: pytest.TempPathFactory, shapes_dataset_dir: Path) -> Path:
    root = tmp_path_factory.mktemp("sdxl-full")
    result = _invoke("train", _config(root, shapes_dataset_dir, "full", "model.safetensors"))
    assert result.exit_code == 0, result.output
    return root / "out" / "model.safetensors"


@pytest.fixture(scope="module")
def embedding(tmp_path_factory: pytest.TempPathFactory, shapes_dataset_dir: Path) -> Path:
    root = tmp_path_factory.mktemp("sdxl-embedding")
    concept = {"path": str(shapes_dataset_dir), "caption": {"prefix": "<shape> "}}
    config = _config(
        root,
        shapes_dataset_dir,
        "embedding",
        "shape.safetensors",
        embedding={"placeholder": "<shape>", "vectors": 2, "init_text": "shape"},
    )
    result = _invoke("train", config, f"data.concepts=[{concept}]")
    assert result.exit_code == 0, result.output
    return root / "out" / "shape.safetensors"


def test_lora_run_writes_sd_scripts_names_for_all_three_parts(lora: Path) -> None:
    modules = {key.partition(".")[0] for key in load_file(lora)}
    assert any(name.startswith("lora_unet_input_blocks_3_1_transformer_blocks_") for name in modules)
    assert any(name.startswith("lora_te1_text_model_encoder_layers_") for name in modules)
    assert any(name.startswith("lora_te2_text_model_encoder_layers_") for name in modules)
    metadata = _metadata(lora)
    assert metadata["modelspec.architecture"] == "stable-diffusion-xl-v1-base/lora"
    assert metadata["ss_base_model_version"] == "sdxl_base_v1-0"


def test_full_run_writes_an_sgm_single_file(full: Path) -> None:
    keys = set(load_file(full))
    assert "conditioner.embedders.1.model.text_projection" in keys
    assert "model.diffusion_model.label_emb.0.0.weight" in keys
    assert _metadata(full)["modelspec.architecture"] == "stable-diffusion-xl-v1-base"


def test_embedding_run_writes_one_vector_set_per_encoder(embedding: Path) -> None:
    vectors = load_file(embedding)
    assert {key: tuple(value.shape) for key, value in vectors.items()} == {"clip_l": (2, 32), "clip_g": (2, 64)}
    assert _metadata(embedding)["modelspec.trigger_phrase"] == "<shape>"


def test_sample_with_the_trained_lora_and_embedding(
    lora: Path, embedding: Path, tiny_sdxl_dir: Path, tmp_path: Path
) -> None:
    output = tmp_path / "image.png"
    result = _invoke(
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


def test_convert_single_file_to_a_folder_and_back(full: Path, tmp_path: Path) -> None:
    folder = tmp_path / "folder"
    result = _invoke("convert", full, folder, "--config", "tiny:sdxl")
    assert result.exit_code == 0, result.output
    assert (folder / "tokenizer_2" / "tokenizer_config.json").is_file()
    back = tmp_path / "back.safetensors"
    result = _invoke("convert", folder, back)
    assert result.exit_code == 0, result.output
    original, again = load_file(full), load_file(back)
    assert original.keys() == again.keys()
    assert all(torch.equal(original[key], again[key]) for key in original)


def test_convert_kohya_lora_to_peft_and_back(lora: Path, tmp_path: Path) -> None:
    """Our tiny model's kohya names follow its block counts, which the file records: no --config needed."""
    assert "onetrainer_architecture" in _metadata(lora)
    peft = tmp_path / "peft.safetensors"
    result = _invoke("convert", lora, peft, "--to", "peft")
    assert result.exit_code == 0, result.output
    assert {key.partition(".")[0] for key in load_file(peft)} == {"unet", "text_encoder", "text_encoder_2"}
    kohya = tmp_path / "kohya.safetensors"
    result = _invoke("convert", peft, kohya, "--to", "kohya")
    assert result.exit_code == 0, result.output
    original, again = load_file(lora), load_file(kohya)
    assert original.keys() == again.keys()
    assert all(torch.equal(original[key], again[key]) for key in original)


def test_a_kohya_lora_of_another_architecture_needs_config(lora: Path, tmp_path: Path) -> None:
    """A file that does not record its architecture is read with the released SDXL UNet's names."""
    bare = tmp_path / "bare.safetensors"
    save_file(load_file(lora), bare, metadata={"ss_base_model_version": "sdxl_base_v1-0"})
    result = _invoke("convert", bare, tmp_path / "peft.safetensors", "--to", "peft")
    assert result.exit_code == 2
    assert "not a module of this SDXL UNet" in " ".join(result.output.replace("│", " ").split())
    result = _invoke("convert", bare, tmp_path / "peft.safetensors", "--to", "peft", "--config", "tiny:sdxl")
    assert result.exit_code == 0, result.output


def test_inspect_names_sdxl(lora: Path, full: Path, embedding: Path) -> None:
    for path in (lora, full, embedding):
        result = _invoke("inspect", path)
        assert result.exit_code == 0, result.output
        assert "SDXL" in result.output


@pytest.mark.parametrize("name", ["sdxl-lora", "sdxl-full", "sdxl-embedding"])
def test_presets_pass_check_as_shipped(name: str) -> None:
    result = _invoke("train", presets_dir() / f"{name}.yaml", "--check")
    assert result.exit_code == 0, result.output
    resolved = yaml.safe_load(result.output)
    assert (resolved["model"]["type"], resolved["data"]["resolution"]) == ("sdxl", 1024)
    assert resolved["parts"]["vae"]["weight_dtype"] in ("fp32", "bf16")
