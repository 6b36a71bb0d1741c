"""`train`, `sample`, `convert` and `inspect` for SD 3 / 3.5 through the CLI, with no SD 3-only flags."""

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
from onetrainer.util.tiny.runs import write_run_config


def _model(kind: str, **options: Any) -> dict[str, Any]:
    return {"type": kind, "base": f"tiny:{kind}", "options": {"t5_max_length": 32, **options}}


@pytest.fixture(scope="module")
def lora(train_tiny_run: Callable[..., Any]) -> Path:
    """A 3.5 Medium LoRA on the transformer and CLIP-L, with a skip-layer-guided preview before training."""
    run = train_tiny_run(
        "sd35-lora",
        _model("sd35-medium", skip_layer_guidance=2.5, skip_layer_guidance_layers=[1]),
        "lora",
        "lora.safetensors",
        "sampling.before_training=true",
        parts={"text_encoder": {"train": True}},
    )
    assert sorted(p.name for p in (run.root / "workspace" / "samples").iterdir()) == ["step-00000000-0.png"]
    return run.saved


@pytest.fixture(scope="module")
def t5_lora(train_tiny_run: Callable[..., Any]) -> Path:
    """An SD 3 Medium LoRA on the transformer and T5, saved with `saving.format: auto`."""
    parts = {"text_encoder_3": {"train": True}}
    run = train_tiny_run("sd3-t5-lora", _model("sd3-medium"), "lora", "lora.safetensors", parts=parts)
    assert "saving.format" not in run.result.output
    return run.saved


@pytest.fixture(scope="module")
def t5_peft_run(train_tiny_run: Callable[..., Any]) -> tuple[Path, list[Any]]:
    """The same LoRA with an explicit `saving.format: peft`: its output and the run's progress events."""
    import json

    parts = {"text_encoder_3": {"train": True}}
    run = train_tiny_run(
        "sd3-t5-peft", _model("sd3-medium"), "lora", "lora.safetensors", "saving.format=peft", "--json", parts=parts
    )
    events = [json.loads(line) for line in run.result.stdout.splitlines() if line.startswith("{")]
    return run.saved, events


@pytest.fixture(scope="module")
def full(train_tiny_run: Callable[..., Any]) -> Path:
    return train_tiny_run("sd35-full", _model("sd35-large"), "full", "model.safetensors").saved


@pytest.fixture(scope="module")
def embedding(train_tiny_run: Callable[..., Any], shapes_dataset_dir: Path) -> Path:
    """An embedding trained on the CLIP encoders of a 3.5 Large loaded without T5."""
    concept = {"path": str(shapes_dataset_dir), "caption": {"prefix": "<shape> "}}
    run = train_tiny_run(
        "sd35-embedding",
        _model("sd35-large", t5=False),
        "embedding",
        "shape.safetensors",
        f"data.concepts=[{concept}]",
        embedding={"placeholder": "<shape>", "vectors": 2, "init_text": "shape"},
    )
    return run.saved


@pytest.mark.parametrize("t5", [True, False])
def test_the_dry_run_estimates_memory_with_the_activations(
    tmp_path: Path, shapes_dataset_dir: Path, t5: bool, cli: Callable[..., Any]
) -> None:
    import json

    config = write_run_config(tmp_path, shapes_dataset_dir, _model("sd35-medium", t5=t5), "lora", "lora.safetensors")
    result = cli("train", config, "--dry-run", "--json")
    assert result.exit_code == 0, result.output
    memory = json.loads(result.stdout.strip().splitlines()[-1])["memory"]
    assert sum(line["bytes"] for line in memory["gpu"] if line["kind"] == "activations") > 0, memory
    assert not any("not estimated" in note for note in memory.get("notes", [])), memory


def test_lora_run_writes_diffusers_keys_for_both_parts(lora: Path) -> None:
    keys = set(load_file(lora))
    assert {key.partition(".")[0] for key in keys} == {"transformer", "text_encoder"}
    assert "transformer.transformer_blocks.0.attn2.to_q.lora_A.weight" in keys, "MMDiT-X's second attention"
    metadata, _ = read_safetensors_header(lora)
    assert metadata["modelspec.architecture"] == "stable-diffusion-v3.5-medium/lora"
    assert metadata["ss_base_model_version"] == "3-5-medium"


def test_a_lora_that_trains_t5_is_saved_as_kohya_and_loads_in_our_loader(
    t5_lora: Path, tiny_sd3_medium_dir: Path
) -> None:
    """ComfyUI reads T5 LoRAs only as `lora_te3_`, and diffusers reads none: `auto` writes kohya for it."""
    from onetrainer.model.adapters import merge_lora, read_lora_file
    from onetrainer.model_loader.pipeline import load_model

    keys = set(load_file(t5_lora))
    assert {key.split("_")[1] for key in keys} == {"transformer", "te3"}, sorted(keys)[:3]
    assert "lora_te3_encoder_block_0_layer_0_SelfAttention_q.lora_down.weight" in keys
    model, base = load_model(tiny_sd3_medium_dir), load_model(tiny_sd3_medium_dir)
    loaded = read_lora_file(t5_lora, model.spec, configs=model.component_configs())
    assert loaded.components == {"transformer", "text_encoder_3"}
    merge_lora(model, loaded, 1.0)
    weight = "encoder.block.0.layer.0.SelfAttention.q.weight"
    t5, t5_base = dict(model.text_encoder_3.named_parameters()), dict(base.text_encoder_3.named_parameters())
    assert not torch.equal(t5[weight], t5_base[weight]), "the trained T5 adapter is merged"


def test_an_explicit_peft_lora_that_trains_t5_is_written_with_one_warning(
    t5_peft_run: tuple[Path, list[Any]],
) -> None:
    """Not refused (our own sample and resume read it), but said once, before the model loads."""
    from onetrainer.model.adapters import read_lora_file
    from onetrainer.util.family import get_family

    path, events = t5_peft_run
    assert {key.partition(".")[0] for key in load_file(path)} == {"transformer", "text_encoder_3"}
    assert read_lora_file(path, get_family("sd3-medium")).components == {"transformer", "text_encoder_3"}
    said = [index for index, event in enumerate(events) if "saving.format" in str(event.get("message"))]
    assert len(said) == 1, [events[index] for index in said]
    warning = events[said[0]]
    assert warning["event"] == "warning"
    assert "saving.format: peft: the T5-XXL text encoder's LoRA" in warning["message"]
    assert "kohya is the layout in which it loads in ComfyUI" in warning["message"]
    loading = next(i for i, event in enumerate(events) if str(event.get("message", "")).startswith("loading"))
    assert said[0] < loading, "said before the model loads"


def test_check_warns_about_an_explicit_peft_lora_that_trains_t5(
    tmp_path: Path, shapes_dataset_dir: Path, cli: Callable[..., Any]
) -> None:
    config = write_run_config(tmp_path, shapes_dataset_dir, _model("sd35-large"), "lora", "lora.safetensors")
    result = cli("train", config, "parts.text_encoder_3.train=true", "--check")
    assert result.exit_code == 0, result.output
    assert "warning" not in result.stderr, "auto saves it as kohya"
    result = cli("train", config, "parts.text_encoder_3.train=true", "saving.format=peft", "--check")
    assert result.exit_code == 0, result.output
    assert yaml.safe_load(result.stdout)["saving"]["format"] == "peft"
    assert "saving.format: peft: the T5-XXL text encoder's LoRA" in result.stderr
    assert "kohya is the layout in which it loads in ComfyUI" in result.stderr
    result = cli("train", config, "saving.format=peft", "--check")
    assert "warning" not in result.stderr, "without T5 every part of a peft file loads in diffusers and ComfyUI"


def test_full_run_writes_stabilitys_checkpoint(full: Path) -> None:
    keys = set(load_file(full))
    assert "model.diffusion_model.joint_blocks.1.x_block.attn.qkv.weight" in keys
    assert "model.diffusion_model.joint_blocks.0.x_block.attn.ln_q.weight" in keys
    assert "first_stage_model.decoder.conv_in.weight" in keys
    assert {key.split(".")[1] for key in keys if key.startswith("text_encoders.")} == {"clip_l", "clip_g", "t5xxl"}
    assert read_safetensors_header(full)[0]["modelspec.architecture"] == "stable-diffusion-v3.5-large"


def test_embedding_run_without_t5_writes_the_clip_vectors(embedding: Path) -> None:
    vectors = load_file(embedding)
    assert {key: tuple(value.shape) for key, value in vectors.items()} == {"clip_l": (2, 32), "clip_g": (2, 48)}
    assert (
        read_safetensors_header(embedding)[0]["modelspec.architecture"]
        == "stable-diffusion-v3.5-large/textual-inversion"
    )


def test_sample_with_the_trained_lora(
    lora: Path, tiny_sd35_medium_dir: Path, tmp_path: Path, cli: Callable[..., Any]
) -> None:
    output = tmp_path / "image.png"
    result = cli(
        "sample", tiny_sd35_medium_dir, "-p", "a circle", "--lora", f"{lora}:0.8", "--steps", 2, "--cfg", 4.5,
        "--width", 64, "--height", 48, "--option", "skip_layer_guidance=2.5", "-o", output,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    with Image.open(output) as image:
        assert image.size == (64, 48)
        assert "Sampler: Euler" in image.text["parameters"], "flow-matching Euler by default"


@pytest.mark.parametrize("t5", ["false", "true"])
def test_sample_with_the_embedding_trained_without_t5(
    embedding: Path, tiny_sd35_large_dir: Path, tmp_path: Path, cli: Callable[..., Any], t5: str
) -> None:
    """Its file holds clip_l + clip_g; with T5 loaded, T5 reads the trigger word as text (as ComfyUI does)."""
    output = tmp_path / "image.png"
    result = cli(
        "sample", tiny_sd35_large_dir, "-p", "a shape circle", "--embedding", embedding, "--option", f"t5={t5}",
        "--steps", 2, "--width", 32, "--height", 32, "-o", output,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert output.is_file()


def test_sample_refuses_a_ddpm_scheduler_and_sizes_off_the_16_px_grid(
    tiny_sd35_large_dir: Path, tmp_path: Path, cli: Callable[..., Any]
) -> None:
    result = cli("sample", tiny_sd35_large_dir, "-p", "a circle", "--scheduler", "ddim", "-o", tmp_path / "a.png")
    assert result.exit_code == 2
    assert "'ddim' is not a flow-matching scheduler" in result.output
    result = cli("sample", tiny_sd35_large_dir, "-p", "a circle", "--width", 72, "-o", tmp_path / "b.png")
    assert result.exit_code == 2


def test_the_trained_checkpoint_samples_and_converts_to_a_folder_and_back(
    full: Path, tiny_sd35_large_dir: Path, tmp_path: Path, cli: Callable[..., Any]
) -> None:
    """A checkpoint holds weights only: the tiny model's architecture (not the released one) is its --config."""
    result = cli(
        "sample", full, "--config", tiny_sd35_large_dir, "-p", "a circle", "--steps", 1, "--width", 32,
        "--height", 32, "-o", tmp_path / "a.png",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    folder = tmp_path / "folder"
    result = cli("convert", full, folder, "--config", tiny_sd35_large_dir)
    assert result.exit_code == 0, result.output
    assert (folder / "tokenizer_3" / "tokenizer_config.json").is_file()
    trained = load_file(folder / "transformer" / "diffusion_pytorch_model.safetensors")
    base = load_file(tiny_sd35_large_dir / "transformer" / "diffusion_pytorch_model.safetensors")
    assert trained.keys() == base.keys()
    assert any(not torch.equal(trained[key], base[key]) for key in base), "the folder holds the trained weights"
    back = tmp_path / "back.safetensors"
    result = cli("convert", folder, back)
    assert result.exit_code == 0, result.output
    original, again = load_file(full), load_file(back)
    assert original.keys() == again.keys()
    assert all(torch.equal(original[key], again[key]) for key in original)


def test_convert_a_checkpoint_without_encoders_takes_them_from_config(
    full: Path, tiny_sd35_large_dir: Path, tmp_path: Path, cli: Callable[..., Any]
) -> None:
    """As Stability publish it: the MMDiT and the VAE alone; the encoders and tokenizers come from --config."""
    bare = tmp_path / "sd3.5_tiny.safetensors"
    from safetensors.torch import save_file

    save_file({k: v for k, v in load_file(full).items() if not k.startswith("text_encoders.")}, bare)
    folder = tmp_path / "folder"
    result = cli("convert", bare, folder, "--config", tiny_sd35_large_dir)
    assert result.exit_code == 0, result.output
    clip = load_file(folder / "text_encoder" / "model.safetensors")
    base = load_file(tiny_sd35_large_dir / "text_encoder" / "model.safetensors")
    assert clip.keys() == base.keys()
    assert all(torch.equal(clip[key], base[key]) for key in base)


def test_convert_peft_lora_to_kohya_and_back(lora: Path, tmp_path: Path, cli: Callable[..., Any]) -> None:
    kohya = tmp_path / "kohya.safetensors"
    result = cli("convert", lora, kohya, "--to", "kohya")
    assert result.exit_code == 0, result.output
    keys = load_file(kohya)
    assert "lora_transformer_transformer_blocks_0_attn2_to_q.lora_down.weight" in keys
    assert any(key.startswith("lora_te1_text_model_encoder_layers_") for key in keys)
    peft = tmp_path / "peft.safetensors"
    result = cli("convert", kohya, peft, "--to", "peft")
    assert result.exit_code == 0, result.output
    assert "warning" not in result.stderr, "diffusers and ComfyUI read every part of it"
    original, again = load_file(lora), load_file(peft)
    assert original.keys() == again.keys()
    assert all(torch.equal(original[key], again[key]) for key in original)


def test_convert_warns_when_a_t5_lora_goes_to_peft(t5_lora: Path, tmp_path: Path, cli: Callable[..., Any]) -> None:
    peft = tmp_path / "peft.safetensors"
    result = cli("convert", t5_lora, peft, "--to", "peft")
    assert result.exit_code == 0, result.output
    assert "--to peft: the T5-XXL text encoder's LoRA" in result.stderr
    assert any(key.startswith("text_encoder_3.") for key in load_file(peft))
    result = cli("convert", peft, tmp_path / "back.safetensors")
    assert result.exit_code == 0, result.output
    assert "warning" not in result.stderr, "auto converts a LoRA to kohya"


def test_inspect_names_sd3(lora: Path, full: Path, tiny_sd3_medium_dir: Path, cli: Callable[..., Any]) -> None:
    for path, title in ((lora, "SD 3.5 Medium"), (full, "SD 3.5 Large"), (tiny_sd3_medium_dir, "SD 3 Medium")):
        result = cli("inspect", path)
        assert result.exit_code == 0, result.output
        assert title in result.output


@pytest.mark.parametrize("name", ["sd35-large-lora", "sd35-large-full", "sd35-medium-lora", "sd35-medium-full"])
def test_presets_pass_check_as_shipped(name: str, cli: Callable[..., Any]) -> None:
    result = cli("train", presets_dir() / f"{name}.yaml", "--check")
    assert result.exit_code == 0, result.output
    resolved = yaml.safe_load(result.output)
    assert (resolved["model"]["type"], resolved["data"]["resolution"]) == (name.rsplit("-", 1)[0], 1024)
    assert resolved["noise"]["shift"] == 3.0


def test_a_folder_converts_to_a_checkpoint_with_t5s_embedding_under_both_names(
    tiny_sd35_large_dir: Path, tmp_path: Path, cli: Callable[..., Any]
) -> None:
    """transformers saves T5's tied embedding once (`shared`); diffusers' `from_single_file` needs
    `encoder.embed_tokens` too, or leaves it empty."""
    folder_t5 = load_file(tiny_sd35_large_dir / "text_encoder_3" / "model.safetensors")
    assert "encoder.embed_tokens.weight" not in folder_t5
    out = tmp_path / "model.safetensors"
    result = cli("convert", tiny_sd35_large_dir, out)
    assert result.exit_code == 0, result.output
    written = load_file(out)
    prefix = "text_encoders.t5xxl.transformer."
    assert torch.equal(written[f"{prefix}encoder.embed_tokens.weight"], written[f"{prefix}shared.weight"])
    assert torch.equal(written[f"{prefix}shared.weight"], folder_t5["shared.weight"])


def test_buckets_beyond_the_positional_embedding_are_refused_before_the_cache_fills(
    tmp_path: Path, shapes_dataset_dir: Path, cli: Callable[..., Any]
) -> None:
    """The tiny MMDiT covers 256 px a side (the released ones 3,072): at resolution 240 a square image fits,
    but a 1:2 image's bucket has a 336 px side. Refused by name before anything is encoded."""
    square_root, wide_root = tmp_path / "square", tmp_path / "wide"
    square_root.mkdir()
    wide_root.mkdir()
    config = write_run_config(square_root, shapes_dataset_dir, _model("sd35-medium"), "lora", "lora.safetensors")
    square = cli("train", config, "data.resolution=240", "data.bucketing=false", "--cache-only")
    assert square.exit_code == 0, square.output
    images = tmp_path / "images"
    images.mkdir()
    Image.new("RGB", (200, 100), "red").save(images / "a.png")
    (images / "a.txt").write_text("a red rectangle")
    config = write_run_config(wide_root, images, _model("sd35-medium"), "lora", "lora.safetensors")
    result = cli("train", config, "data.resolution=240", "--cache-only")
    assert result.exit_code == 2, result.output
    said = " ".join(result.output.replace("│", " ").split())
    assert "the data's buckets reach 336 px a side, more than the 256 px this model's positional embedding" in said
    assert "data.resolution" in said
    assert not list(wide_root.rglob("*.safetensors")), "nothing was encoded"
