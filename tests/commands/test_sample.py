"""`onetrainer sample` through the CLI: PNGs with their parameters, LoRAs, embeddings, and every bad input."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from onetrainer.commands.app import app
from onetrainer.model.adapters import inject_lora
from onetrainer.model.adapters.lora import LoraTargets
from onetrainer.model_loader.pipeline import load_model
from onetrainer.model_saver.diffusion import DiffusionSaver
from onetrainer.util import registry
from onetrainer.util.atomic import save_safetensors
from onetrainer.util.enums import TrainingMethod
from onetrainer.util.registry import ModuleKind

runner = CliRunner()
FAST = ("--steps", "2", "--scheduler", "ddim")


def sample(*args: object) -> object:
    return runner.invoke(app, ["sample", *map(str, args)])


def said(result: object) -> str:
    """The output with the error panel's borders and line wrapping removed."""
    return " ".join(result.output.replace("│", " ").split())


@pytest.fixture(scope="module")
def lora_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    model = load_model("tiny:sd15")
    presets = model.spec.component("unet").lora_presets
    adapter = inject_lora(model, kind="lora", rank=2, alpha=2.0, targets={"unet": LoraTargets("attn", presets=presets)})
    with torch.no_grad():
        for param in adapter.parameters(model, "unet"):
            param.copy_(torch.randn(param.shape, generator=torch.Generator().manual_seed(1)))
    model.adapters.lora = adapter
    path = tmp_path_factory.mktemp("sample") / "style.safetensors"
    DiffusionSaver().save(model, path, method=TrainingMethod.LORA, format="kohya", dtype="fp32")
    return path


def test_writes_numbered_pngs_with_their_parameters(tmp_path: Path) -> None:
    result = sample(
        "tiny:sd15", "--prompt", "a red circle", "-n", "blurry", *FAST, "--seed", "3", "--count", "2", "-o", tmp_path
    )
    assert result.exit_code == 0, result.output
    first, second = tmp_path / "00000-3.png", tmp_path / "00001-4.png"
    assert str(first) in result.output
    assert second.is_file()
    text = Image.open(first).text
    assert text["parameters"].startswith(
        "a red circle\nNegative prompt: blurry\nSteps: 2, Sampler: DDIM, CFG scale: 7,"
    )
    data = json.loads(Image.open(second).text["onetrainer"])
    assert (data["seed"], data["steps"], data["cfg"], data["scheduler"], data["model"]) == (
        4,
        2,
        7.0,
        "ddim",
        "tiny:sd15",
    )


def test_lora_with_strength_and_embedding_are_applied_and_recorded(lora_file: Path, tmp_path: Path) -> None:
    embedding = tmp_path / "tok.safetensors"
    save_safetensors({"emb_params": torch.randn(2, 32, generator=torch.Generator().manual_seed(2))}, embedding)
    plain = sample("tiny:sd15", "-p", "a tok cat", *FAST, "--seed", "1", "-o", tmp_path / "plain.png")
    styled = sample(
        "tiny:sd15", "-p", "a tok cat", *FAST, "--seed", "1", "-o", tmp_path / "styled.png",
        "--lora", f"{lora_file}:0.5", "--embedding", embedding,
    )  # fmt: skip
    assert plain.exit_code == 0, plain.output
    assert styled.exit_code == 0, styled.output
    data = json.loads(Image.open(tmp_path / "styled.png").text["onetrainer"])
    assert data["loras"] == [[str(lora_file), 0.5]]
    assert data["embeddings"] == ["tok"]
    difference = np.abs(
        np.asarray(Image.open(tmp_path / "plain.png"), int) - np.asarray(Image.open(tmp_path / "styled.png"), int)
    )
    assert difference.mean() > 1


def test_an_embedding_named_after_a_vocabulary_token_is_refused_with_how_to_rename_it(tmp_path: Path) -> None:
    """`cat` is a token of the vocabulary: as a new token it would replace it, inside "catalog" too."""
    embedding = tmp_path / "cat.safetensors"
    save_safetensors({"emb_params": torch.zeros(1, 32)}, embedding)
    result = sample("tiny:sd15", "-p", "a cat", *FAST, "-o", tmp_path / "cat.png", "--embedding", embedding)
    assert result.exit_code == 2, result.output
    assert "the placeholder 'cat' is already in the vocabulary" in said(result)
    assert "rename the file" in said(result)
    assert "cat-embedding.safetensors" in said(result)
    assert not (tmp_path / "cat.png").exists()


def test_output_file_is_not_overwritten_without_the_flag(tmp_path: Path) -> None:
    target = tmp_path / "a.png"
    target.write_bytes(b"keep")
    result = sample("tiny:sd15", "-p", "x", *FAST, "-o", target)
    assert result.exit_code == 2
    assert "output exists" in said(result)
    assert target.read_bytes() == b"keep"
    assert sample("tiny:sd15", "-p", "x", *FAST, "-o", target, "--overwrite").exit_code == 0
    assert Image.open(target).size == (64, 64)


class _Evil:
    def __reduce__(self):
        return (print, ("pwned",))


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bad")
    (root / "corrupt.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    with open(root / "unsafe.ckpt", "wb") as handle:
        pickle.dump({"state_dict": _Evil()}, handle)
    save_safetensors(
        {"lora_te2_text_model_encoder_layers_0_mlp_fc1.lora_down.weight": torch.zeros(2, 1280)},
        root / "xl-lora.safetensors",
    )
    save_safetensors({"clip_l": torch.zeros(1, 768), "clip_g": torch.zeros(1, 1280)}, root / "xl-emb.safetensors")
    # FLUX.1's transformer LoRA and CLIP-L + T5 embedding: dev's or schnell's.
    save_safetensors(
        {"lora_transformer_single_transformer_blocks_0_attn_to_k.lora_down.weight": torch.zeros(2, 3072)},
        root / "flux-lora.safetensors",
    )
    save_safetensors({"clip_l": torch.zeros(1, 768), "t5xxl": torch.zeros(1, 4096)}, root / "flux-emb.safetensors")
    # A made-up transformer's LoRA and a CLIP-L + made-up encoder embedding: no family claims them.
    save_safetensors(
        {"lora_transformer_zeta_blocks_0_attn_qkv.lora_down.weight": torch.zeros(2, 3072)},
        root / "zeta-lora.safetensors",
    )
    save_safetensors({"clip_l": torch.zeros(1, 768), "zeta_te": torch.zeros(1, 4096)}, root / "zeta-emb.safetensors")
    attn2_to_k = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k"
    save_safetensors(
        {f"{attn2_to_k}.lora_down.weight": torch.zeros(2, 1024), f"{attn2_to_k}.lora_up.weight": torch.zeros(32, 2)},
        root / "sd2-lora.safetensors",
    )
    save_safetensors({"emb_params": torch.zeros(1, 1024)}, root / "sd2-emb.safetensors")
    return {path.stem: path for path in root.iterdir()}


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--scheduler", "eulr"], "unknown scheduler 'eulr'; did you mean 'euler'"),
        (["--scheduler", "heun"], "ddim, euler, euler-a, dpm++2m, dpm++2m-karras, unipc, ddpm"),
        (["--lora", "{tmp}/missing.safetensors"], "LoRA file not found"),
        (["--lora", "{tmp}"], "is a folder; give the LoRA file in it"),
        (["--embedding", "{tmp}/missing.safetensors"], "embedding file not found"),
        (["--lora", "{xl-lora}:strong"], "strength 'strong' is not a number"),
        (["--lora", "{sd2-lora}"], "this LoRA is for SD 2.x (cross-attention width 1024), not for this SD 1.x model"),
        (["--embedding", "{sd2-emb}"], "this embedding is for SD 2.x (vector width 1024), not for this SD 1.x model"),
        (["--lora", "{xl-lora}"], "this LoRA is for SDXL (LoRA for two text encoders), not for this SD 1.x model"),
        (["--embedding", "{xl-emb}"], "this embedding is for SDXL (clip_l and clip_g vectors), not for this SD 1.x"),
        (["--lora", "{flux-lora}"], "this LoRA is for FLUX.1-dev/FLUX.1-schnell (FLUX.1 LoRA (dev and schnell"),
        (["--embedding", "{flux-emb}"], "this embedding is for FLUX.1-dev/FLUX.1-schnell (clip_l and t5xxl vectors)"),
        (["--lora", "{zeta-lora}"], "lora_transformer_zeta_blocks_0_attn_qkv: not a kohya module name"),
        (["--embedding", "{zeta-emb}"], "is not a model, LoRA or embedding this tool knows"),
        (["-o", "{tmp}/out.jpg"], "written as PNG"),
        (["--model-type", "sd16"], "unknown model type 'sd16'; did you mean 'sd15'"),
        (["--device", "cuda:99"], "not available"),
        (["--device", "tpu"], "unknown device"),
        (["--width", "60"], "multiple of 8"),
        (["--lora", "{xl-emb}"], "is an embedding"),
        (["--embedding", "{sd2-lora}"], "is a LoRA"),
        (["--lora", "{corrupt}"], "corrupt"),
        (["--lora", "{xl-lora}:nan"], "strength is not finite"),
        (["--cfg", "inf"], "Invalid value for '--cfg': inf is not a finite number"),
        (["--cfg", "nan"], "Invalid value for '--cfg': nan is not a number"),  # was "greater than or equal to 0"
        (["--cfg", "-1"], "Invalid value for '--cfg': -1 is below 0, the smallest allowed"),
        (["--config", "{tmp}/no-such-config"], "no such file or folder, and not a hub id of the form org/name"),
        (["--seed", str(2**64)], "too large"),
        (["--clip-skip", "12"], "--clip-skip 12 skips more layers than the CLIP ViT-L text encoder has"),
    ],
)
def test_bad_input_exits_2(args: list[str], expected: str, bad_files: dict[str, Path], tmp_path: Path) -> None:
    names = {"tmp": tmp_path, **bad_files}
    filled = [arg.format(**names) for arg in args]
    result = sample("tiny:sd15", "-p", "x", *FAST, "-o", tmp_path, *filled)
    assert result.exit_code == 2, result.output
    assert expected in said(result)
    if filled[0] == "--config":
        assert "where: --config" in said(result), "it said: the MODEL argument"


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        ("{tmp}/nothing-here.safetensors", "not found"),
        ("{corrupt}", "corrupt"),
        ("{unsafe}", "refused"),
        ("{xl-lora}", "not a base model"),
    ],
)
def test_bad_model_exits_2(model: str, expected: str, bad_files: dict[str, Path], tmp_path: Path) -> None:
    result = sample(model.format(tmp=tmp_path, **bad_files), "-p", "x", *FAST, "-o", tmp_path)
    assert result.exit_code == 2, result.output
    assert expected in said(result).lower()


def test_size_cfg_and_dtype_options(tmp_path: Path) -> None:
    target = tmp_path / "wide.png"
    result = sample(
        "tiny:sd15",
        "-p",
        "x",
        *FAST,
        "--width",
        "96",
        "--height",
        "64",
        "--cfg",
        "1.5",
        "--dtype",
        "bf16",
        "-o",
        target,
    )
    assert result.exit_code == 0, result.output
    image = Image.open(target)
    assert image.size == (96, 64)
    data = json.loads(image.text["onetrainer"])
    assert (data["cfg"], data["width"], data["height"]) == (1.5, 96, 64)
    bad = sample("tiny:sd15", "-p", "x", *FAST, "--dtype", "fp8", "-o", tmp_path)
    assert bad.exit_code == 2
    assert "fp8" in said(bad)


UNCACHED = "onetrainer-test/no-such-model"
"""A hub id that is never in the cache: loading it would fail, so an error about anything else proves
that thing was checked before the model was looked for."""


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--height", "100000"], "--height 100000 is larger than the 4096 px"),
        (["--width", "4104"], "--width 4104 is larger than the 4096 px"),
        (["--width", "100"], "--width 100 is not a positive multiple of 8"),
        (["--height", "0"], "--height 0 is not a positive multiple of 8"),
    ],
)
def test_sizes_are_checked_before_the_model_is_looked_for(args: list[str], expected: str, tmp_path: Path) -> None:
    """`--height 100000` used to be accepted and denoise for minutes."""
    result = sample(UNCACHED, "--model-type", "sd15", "-p", "x", "-o", tmp_path, *args)
    assert result.exit_code == 2, result.output
    assert expected in said(result)
    assert "not on this machine" not in said(result)


def test_the_largest_allowed_size_names_its_nearest_multiples(tmp_path: Path) -> None:
    result = sample(UNCACHED, "--model-type", "sd15", "-p", "x", "-o", tmp_path, "--width", "100")
    assert "use 96 or 104" in said(result)


def test_an_output_under_a_file_is_refused_before_the_model_is_looked_for(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")
    result = sample(UNCACHED, "--model-type", "sd15", "-p", "x", "-o", blocker / "out.png")
    assert result.exit_code == 2, result.output
    assert f"{blocker} is a file, not a folder" in said(result)
    assert "where: --output" in said(result)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_output_folder_is_refused_before_sampling(tmp_path: Path) -> None:
    """This failed with PermissionError (exit 1), after the images were generated."""
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        result = sample(UNCACHED, "--model-type", "sd15", "-p", "x", "-o", locked / "out")
    finally:
        locked.chmod(0o755)
    assert result.exit_code == 2, result.output
    assert f"cannot write into {locked}" in said(result)
    assert list(locked.iterdir()) == []


def test_an_uncached_hub_model_gives_the_one_message_naming_the_argument(tmp_path: Path) -> None:
    """It used to leak LocalEntryNotFoundError and suggest --model-type."""
    result = sample(UNCACHED, "-p", "x", "-o", tmp_path)
    text = said(result)
    assert result.exit_code == 2, result.output
    assert "Model not available" in text
    assert f"the base model '{UNCACHED}' is not on this machine" in text
    assert "where: the MODEL argument" in text
    assert f"`hf download {UNCACHED}`" in text
    assert "LocalEntryNotFoundError" not in text
    assert "--model-type" not in text


def test_a_model_type_without_a_sampler_is_refused_with_those_that_have_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A registered family whose sampler is not registered (as while it is being added) cannot sample."""
    registry.discover()
    monkeypatch.delitem(registry._registry, (ModuleKind.SAMPLER, "sdxl"))
    result = sample("tiny:sd15", "-p", "x", "-o", tmp_path, "--model-type", "sdxl")
    assert result.exit_code == 2
    assert "model type 'sdxl' is not supported by this command in this version" in said(result)
    usable = registry.supporting((ModuleKind.LOADER, ModuleKind.SAMPLER))
    assert "sdxl" not in usable
    assert {"sd15", "sd2"} <= set(usable)
    assert f"This command supports: {', '.join(usable)}." in said(result)


def test_clip_skip_applies_to_the_encoders_read_at_a_hidden_layer(tmp_path: Path) -> None:
    """SD 3's CLIP encoders take it and T5 keeps its last layer (as diffusers' `clip_skip`); FLUX.1 reads no
    hidden layer, which `--clip-skip` is told."""
    from onetrainer.model_loader.pipeline import load_model
    from onetrainer.model_sampler.clip_skip import clip_skip_layers

    sd3 = load_model("tiny:sd35-medium")
    assert clip_skip_layers(sd3, 2) == {"text_encoder": 1, "text_encoder_2": 1}
    assert clip_skip_layers(sd3, 1) == {"text_encoder": 0, "text_encoder_2": 0}
    size = ("--width", "32", "--height", "32")
    result = sample("tiny:sd35-medium", "-p", "x", "--steps", "2", *size, "-o", tmp_path / "sd3", "--clip-skip", "2")
    assert result.exit_code == 0, result.output
    assert list((tmp_path / "sd3").glob("*.png"))
    flux = sample("tiny:flux-dev", "-p", "x", "--steps", "2", "-o", tmp_path / "flux", "--clip-skip", "2")
    assert flux.exit_code == 2, flux.output
    assert "clip skip does not apply" in said(flux)
    assert "--clip-skip" in said(flux)


def test_a_side_beyond_the_positional_embedding_is_refused_by_name(tmp_path: Path) -> None:
    """SD 3's MMDiT has a fixed positional table (`pos_embed_max_size` patches a side: 3,072 px for the released
    models, 256 px for the tiny one); a larger side is a user error, not diffusers' ValueError."""
    result = sample("tiny:sd35-medium", "-p", "x", "--steps", "1", "--width", "272", "-o", tmp_path)
    assert result.exit_code == 2, result.output
    assert "width 272 is larger than the 256 px this model's positional embedding covers" in said(result)


def test_the_default_size_stays_within_the_positional_embedding(tmp_path: Path) -> None:
    """The tiny MMDiT reaches 256 px, less than SD 3's 1,024 px default: the default takes the smaller."""
    result = sample("tiny:sd35-medium", "-p", "x", "--steps", "1", "-o", tmp_path)
    assert result.exit_code == 0, result.output
    from PIL import Image

    (image,) = tmp_path.glob("*.png")
    with Image.open(image) as png:
        assert png.size == (256, 256)
