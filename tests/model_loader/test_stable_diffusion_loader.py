"""Loading SD 1.x / 2.x base models from tiny:<family>, diffusers folders and the hub."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from onetrainer.model_loader.pipeline import DiffusersLoader, load_model
from onetrainer.model_loader.stable_diffusion import read_single_file, stable_diffusion_loader
from onetrainer.util.config.model import ModelConfig
from onetrainer.util.errors import UserError
from onetrainer.util.family import family_names
from onetrainer.util.registry import ModuleKind, lookup


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_loader_is_registered_for_sd15_and_sd2() -> None:
    for model_type in ("sd15", "sd2"):
        assert lookup(ModuleKind.LOADER, model_type) is stable_diffusion_loader
        loader = lookup(ModuleKind.LOADER, model_type)()
        assert isinstance(loader, DiffusersLoader)
        assert loader.read_single_file is read_single_file


@pytest.mark.parametrize(
    ("base", "model_type", "prediction"),
    [
        ("tiny:sd15", "sd15", "epsilon"),
        ("tiny:sd2", "sd2", "epsilon"),
        ("tiny:sd2-v", "sd2", "v_prediction"),
    ],
)
def test_tiny_models_load_with_their_family_and_prediction(base: str, model_type: str, prediction: str) -> None:
    model = load_model(base)
    assert (model.model_type, model.prediction_type) == (model_type, prediction)
    assert model.noise_scheduler.config.prediction_type == prediction
    assert len(model.tokenizer) == 1514


def test_tiny_model_is_deterministic() -> None:
    assert _same_weights(load_model("tiny:sd15").unet, load_model("tiny:sd15").unet)


def test_diffusers_folder_loads_its_weights_and_scheduler(tiny_sd2_dir: Path) -> None:
    model = load_model(tiny_sd2_dir)
    assert (model.model_type, model.prediction_type, model.source) == ("sd2", "v_prediction", str(tiny_sd2_dir))
    assert _same_weights(model.unet, load_model("tiny:sd2-v").unet)
    assert model.scheduler_class == "DDPMScheduler"


def test_registered_loader_reads_the_model_config(tiny_sd15_dir: Path) -> None:
    config = ModelConfig(base=str(tiny_sd15_dir), type="sd15", dtype="bf16", prediction_type="v_prediction")
    model = lookup(ModuleKind.LOADER, "sd15")().load(config)
    assert model.unet.dtype == model.text_encoder.dtype == model.vae.dtype == torch.bfloat16
    assert model.prediction_type == model.noise_scheduler.config.prediction_type == "v_prediction"


def test_asking_for_the_wrong_family_says_what_the_model_is(tiny_sd2_dir: Path, tiny_flux_dev_dir: Path) -> None:
    with pytest.raises(UserError, match=r"model type sd15 was asked for, but .* is a SD 2\.x model") as info:
        load_model(tiny_sd2_dir, model_type="sd15")
    assert "sd2" in (info.value.hint or "")
    with pytest.raises(UserError, match=r"model type sd15 was asked for, but .* is a FLUX\.1-dev model") as info:
        load_model(tiny_flux_dev_dir, model_type="sd15")
    assert "flux-dev" in (info.value.hint or "")


def test_a_pipeline_of_an_unregistered_family_is_refused_naming_its_class(unregistered_pipeline_dir: Path) -> None:
    with pytest.raises(UserError, match=r"is a model of no family this version supports .*ZetaImagePipeline") as info:
        load_model(unregistered_pipeline_dir)
    assert f"Supported model types: {', '.join(family_names())}." in (info.value.hint or "")
    with pytest.raises(UserError, match=r"is not a SD 1\.x model \(pipeline class ZetaImagePipeline"):
        load_model(unregistered_pipeline_dir, model_type="sd15")


def test_a_lora_is_not_a_base_model(tmp_path: Path) -> None:
    lora = tmp_path / "style.safetensors"
    save_file({"lora_unet_mid_block_attentions_0_proj_in.lora_down.weight": torch.zeros(4, 32)}, str(lora))
    with pytest.raises(UserError, match="is a LoRA, not a base model"):
        load_model(lora)


def test_vae_override_from_a_folder_replaces_only_the_vae(tiny_sd15_dir: Path, tiny_sd2_eps_dir: Path) -> None:
    model = load_model(tiny_sd15_dir, vae=tiny_sd2_eps_dir)
    donor = load_model(tiny_sd2_eps_dir)
    assert _same_weights(model.vae, donor.vae)
    assert _same_weights(model.unet, load_model("tiny:sd15").unet)


def test_vae_override_from_an_original_layout_file(tmp_path: Path, tiny_sd15_dir: Path, sd2_single_file: Path) -> None:
    from onetrainer.model_loader.checkpoint import WeightsFile

    vae_file = tmp_path / "vae-ft.safetensors"
    prefix = "first_stage_model."
    with WeightsFile(sd2_single_file) as weights:
        ldm = {k.removeprefix(prefix): weights.tensor(k) for k in weights if k.startswith(prefix)}
    save_file(ldm, str(vae_file))
    model = load_model(tiny_sd15_dir, vae=vae_file)
    assert _same_weights(model.vae, load_model("tiny:sd2-v").vae)


def test_uncached_hub_model_offline_is_a_clear_error() -> None:
    with pytest.raises(UserError, match="not in the Hugging Face cache") as info:
        load_model("onetrainer-test/no-such-model")
    assert "HF_HUB_OFFLINE" in (info.value.hint or "")
    assert info.value.where == "model.base"


def test_unknown_tiny_model_and_missing_paths_are_user_errors(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="unknown tiny model"):
        load_model("tiny:zeta")
    with pytest.raises(UserError, match="file or folder not found") as info:
        load_model(tmp_path / "missing.safetensors")
    assert info.value.where == "model.base"
    assert str(tmp_path / "missing.safetensors") in (info.value.hint or "")


@pytest.fixture
def hub_cache(cache_hub_model: Callable[[str, Path], Path], tiny_sd15_dir: Path) -> Path:
    """A local Hugging Face cache holding `onetrainer-test/tiny-sd15`, as a download would leave it."""
    return cache_hub_model("onetrainer-test/tiny-sd15", tiny_sd15_dir)


def test_cached_hub_model_loads_offline_through_from_pretrained(hub_cache: Path) -> None:
    model = load_model("onetrainer-test/tiny-sd15")
    assert (model.model_type, model.source, len(model.tokenizer)) == ("sd15", "onetrainer-test/tiny-sd15", 1514)
    assert _same_weights(model.unet, load_model("tiny:sd15").unet)


def test_hub_model_whose_tokenizer_is_not_cached_is_not_loaded_with_an_empty_one(hub_cache: Path) -> None:
    import shutil

    shutil.rmtree(hub_cache / "tokenizer")
    with pytest.raises(
        UserError, match=r"tokenizer of onetrainer-test/tiny-sd15 has 2 tokens but the text encoder has 1,514"
    ):
        load_model("onetrainer-test/tiny-sd15")


@pytest.fixture
def small_vocab_dir(tmp_path: Path, small_tokenizer) -> Path:
    """A valid tiny SD 1.5 folder whose tokenizer and text encoder share a 100-token vocabulary."""
    from onetrainer.util.tiny.models import build_tiny_sd15_pipeline

    pipe = build_tiny_sd15_pipeline()
    pipe.text_encoder.resize_token_embeddings(len(small_tokenizer))
    pipe.tokenizer = small_tokenizer
    pipe.save_pretrained(tmp_path / "small-vocab")
    return tmp_path / "small-vocab"


def test_a_tokenizer_smaller_than_256_tokens_that_fits_its_text_encoder_loads(small_vocab_dir: Path) -> None:
    model = load_model(small_vocab_dir)
    assert len(model.tokenizer) == model.text_encoder.config.vocab_size == 100


def test_a_tokenizer_of_another_text_encoder_is_refused(small_vocab_dir: Path, tiny_sd15_dir: Path) -> None:
    import shutil

    shutil.rmtree(small_vocab_dir / "tokenizer")
    shutil.copytree(tiny_sd15_dir / "tokenizer", small_vocab_dir / "tokenizer")
    with pytest.raises(UserError, match="has 1,514 tokens, more than the text encoder's 100") as info:
        load_model(small_vocab_dir)
    assert "does not belong" in (info.value.hint or "")


@pytest.mark.parametrize("base", ["tiny:sd15", "tiny:sd2"])
def test_loaded_models_use_sdpa_attention(base: str) -> None:
    model = load_model(base)
    assert {type(p).__name__ for p in model.unet.attn_processors.values()} == {"AttnProcessor2_0"}
    assert {type(p).__name__ for p in model.vae.attn_processors.values()} == {"AttnProcessor2_0"}
    assert model.text_encoder.config._attn_implementation == "sdpa"


def test_an_sd2_tokenizer_from_elsewhere_pads_with_openclips_pad_token(
    sd2_single_file: Path, tiny_sd2_dir: Path, tiny_sd15_dir: Path
) -> None:
    """OpenCLIP ViT-H was trained padding with "!": a CLIP-L tokenizer (padding with its end token) given for it
    pads with "!" too, as A1111 and ComfyUI pad SD 2.x."""
    assert load_model(tiny_sd15_dir).tokenizer.pad_token == "<|endoftext|>"
    model = load_model(sd2_single_file, config=str(tiny_sd2_dir), tokenizer=str(tiny_sd15_dir))
    assert model.tokenizer.pad_token == "!"
    assert load_model(tiny_sd2_dir).tokenizer.pad_token == "!"
