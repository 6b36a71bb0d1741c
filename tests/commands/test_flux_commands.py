"""`train`, `sample`, `convert` and `inspect` for FLUX.1 through the CLI, with no FLUX-only flags."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from PIL import Image
from safetensors.torch import load_file

from onetrainer.util.config.presets import presets_dir
from onetrainer.util.safetensors_meta import read_safetensors_header

MODEL = {"type": "flux-dev", "base": "tiny:flux-dev", "options": {"t5_max_length": 32}}


@pytest.fixture(scope="module")
def lora(train_tiny_run: Callable[..., Any]) -> Path:
    """A LoRA on the transformer and CLIP-L, with a preview before training."""
    parts = {"text_encoder": {"train": True}}
    run = train_tiny_run("flux-lora", MODEL, "lora", "lora.safetensors", "sampling.before_training=true", parts=parts)
    assert sorted(p.name for p in (run.root / "workspace" / "samples").iterdir()) == ["step-00000000-0.png"]
    return run.saved


@pytest.fixture(scope="module")
def full(train_tiny_run: Callable[..., Any]) -> Path:
    return train_tiny_run("flux-full", MODEL, "full", "transformer.safetensors").saved


def test_lora_run_writes_bfl_names_with_fused_qkv(lora: Path) -> None:
    modules = {key.partition(".")[0] for key in load_file(lora)}
    assert "lora_unet_double_blocks_0_img_attn_qkv" in modules
    assert "lora_unet_single_blocks_1_linear1" in modules
    assert any(name.startswith("lora_te1_text_model_encoder_layers_") for name in modules)
    metadata, _ = read_safetensors_header(lora)
    assert metadata["modelspec.architecture"] == "flux-1-dev/lora"
    assert metadata["ss_base_model_version"] == "flux1"
    assert metadata["modelspec.implementation"] == "https://github.com/black-forest-labs/flux"


def test_full_run_writes_the_bfl_transformer_file(full: Path) -> None:
    keys = set(load_file(full))
    assert "double_blocks.1.img_attn.qkv.weight" in keys
    assert "guidance_in.in_layer.weight" in keys
    assert not any(key.startswith(("text_encoders.", "vae.", "first_stage_model.")) for key in keys)
    metadata, _ = read_safetensors_header(full)
    assert metadata["modelspec.architecture"] == "flux-1-dev"
    assert metadata["modelspec.implementation"] == "https://github.com/black-forest-labs/flux"


def test_sample_with_the_trained_lora(
    lora: Path, tiny_flux_dev_dir: Path, tmp_path: Path, cli: Callable[..., Any]
) -> None:
    output = tmp_path / "image.png"
    result = cli(
        "sample", tiny_flux_dev_dir, "-p", "a circle", "--lora", f"{lora}:0.8", "--steps", 2, "--cfg", 3.5,
        "--width", 64, "--height", 48, "-o", output,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    with Image.open(output) as image:
        assert image.size == (64, 48)
        assert "Sampler: Euler" in image.text["parameters"], "flow-matching Euler by default"


def test_sample_refuses_a_ddpm_scheduler_and_sizes_off_the_16_px_grid(
    tiny_flux_dev_dir: Path, tmp_path: Path, cli: Callable[..., Any]
) -> None:
    result = cli("sample", tiny_flux_dev_dir, "-p", "a circle", "--scheduler", "ddim", "-o", tmp_path / "a.png")
    assert result.exit_code == 2
    assert "'ddim' is not a flow-matching scheduler" in result.output
    result = cli("sample", tiny_flux_dev_dir, "-p", "a circle", "--width", 72, "-o", tmp_path / "b.png")
    assert result.exit_code == 2


def test_the_transformer_file_loads_with_its_text_encoders_and_vae_from_config(
    full: Path, tiny_flux_dev_dir: Path, tmp_path: Path, cli: Callable[..., Any]
) -> None:
    from onetrainer.model_loader.pipeline import load_model

    model = load_model(full, config=str(tiny_flux_dev_dir))
    base = load_model(tiny_flux_dev_dir)
    assert model.spec.name == "flux-dev"
    trained = load_file(full)
    assert any(
        not torch.equal(a, b)
        for a, b in zip(model.transformer.state_dict().values(), base.transformer.state_dict().values(), strict=True)
    )
    assert all(torch.equal(model.vae.state_dict()[k], v) for k, v in base.vae.state_dict().items())
    assert len(trained) < len(model.transformer.state_dict()), "q, k, v are fused in the file"
    output = tmp_path / "image.png"
    result = cli(
        "sample",
        full,
        "--config",
        tiny_flux_dev_dir,
        "-p",
        "a circle",
        "--steps",
        1,
        "--width",
        32,
        "--height",
        32,
        "-o",
        output,
    )
    assert result.exit_code == 0, result.output


def test_a_transformer_file_without_config_says_where_the_rest_comes_from(full: Path) -> None:
    from onetrainer.model_loader.pipeline import load_model
    from onetrainer.util.errors import UserError

    with pytest.raises(UserError, match="has no CLIP ViT-L text encoder weights") as error:
        load_model(full)
    assert "model.config" in (error.value.hint or "")


def test_convert_the_transformer_file_to_a_folder_and_back(
    full: Path, tiny_flux_dev_dir: Path, tmp_path: Path, cli: Callable[..., Any]
) -> None:
    folder = tmp_path / "folder"
    result = cli("convert", full, folder, "--config", tiny_flux_dev_dir)
    assert result.exit_code == 0, result.output
    assert (folder / "tokenizer_2" / "tokenizer_config.json").is_file()
    assert (
        load_file(folder / "vae" / "diffusion_pytorch_model.safetensors").keys()
        == load_file(tiny_flux_dev_dir / "vae" / "diffusion_pytorch_model.safetensors").keys()
    )
    back = tmp_path / "back.safetensors"
    result = cli("convert", folder, back)
    assert result.exit_code == 0, result.output
    original, again = load_file(full), load_file(back)
    assert original.keys() == again.keys()
    assert all(torch.equal(original[key], again[key]) for key in original)


def test_convert_kohya_lora_to_peft_and_back(lora: Path, tmp_path: Path, cli: Callable[..., Any]) -> None:
    peft = tmp_path / "peft.safetensors"
    result = cli("convert", lora, peft, "--to", "peft")
    assert result.exit_code == 0, result.output
    keys = load_file(peft)
    assert {key.partition(".")[0] for key in keys} == {"transformer", "text_encoder"}
    assert "transformer.transformer_blocks.0.attn.to_q.lora_A.weight" in keys
    kohya = tmp_path / "kohya.safetensors"
    result = cli("convert", peft, kohya, "--to", "kohya")
    assert result.exit_code == 0, result.output
    original, again = load_file(lora), load_file(kohya)
    assert original.keys() == again.keys()
    assert all(torch.equal(original[key], again[key]) for key in original)


def test_inspect_names_flux(lora: Path, full: Path, tiny_flux_dev_dir: Path, cli: Callable[..., Any]) -> None:
    for path in (lora, full, tiny_flux_dev_dir):
        result = cli("inspect", path)
        assert result.exit_code == 0, result.output
        assert "FLUX.1-dev" in result.output


@pytest.mark.parametrize(
    ("name", "resolution"),
    [("flux-dev-lora", 1024), ("flux-dev-lora-512", 512), ("flux-dev-lora-768", 768), ("flux-dev-full", 1024)],
)
def test_presets_pass_check_as_shipped(name: str, resolution: int, cli: Callable[..., Any]) -> None:
    result = cli("train", presets_dir() / f"{name}.yaml", "--check")
    assert result.exit_code == 0, result.output
    resolved = yaml.safe_load(result.output)
    assert (resolved["model"]["type"], resolved["data"]["resolution"]) == ("flux-dev", resolution)


def test_the_schnell_preset_passes_check_as_shipped(cli: Callable[..., Any]) -> None:
    result = cli("train", presets_dir() / "flux-schnell-lora.yaml", "--check")
    assert result.exit_code == 0, result.output
    assert yaml.safe_load(result.output)["model"]["options"] == {"t5_max_length": 256}


def test_sample_takes_family_options(tiny_flux_dev_dir: Path, tmp_path: Path, cli: Callable[..., Any]) -> None:
    def draw(*options: str) -> bytes:
        output = tmp_path / f"{len(list(tmp_path.iterdir()))}.png"
        args = ["sample", tiny_flux_dev_dir, "-p", "a circle", "-n", "blurry", "--steps", 2, "--seed", 1]
        result = cli(*args, "--width", 32, "--height", 32, *options, "-o", output)
        assert result.exit_code == 0, result.output
        with Image.open(output) as image:
            return image.tobytes()

    assert draw("--option", "true_cfg=3") != draw(), "true CFG with the negative prompt"
    assert draw("--option", "t5_max_length=8") != draw()
    result = cli("sample", tiny_flux_dev_dir, "-p", "a", "--option", "guidanse=2", "-o", tmp_path / "x.png")
    assert result.exit_code == 2
    assert "--option guidanse" in result.output
