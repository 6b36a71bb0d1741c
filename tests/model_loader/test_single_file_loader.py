"""Loading original single-file checkpoints: architecture, tokenizer, pickles, and every bad input."""

from __future__ import annotations

import argparse
import json
import struct
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from onetrainer.model_loader.checkpoint import WeightsFile
from onetrainer.model_loader.pipeline import load_model
from onetrainer.util.errors import UserError
from onetrainer.util.family import families


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize(("fixture", "tiny"), [("sd15_single_file", "tiny:sd15"), ("sd2_single_file", "tiny:sd2-v")])
def test_single_file_with_its_config_folder_equals_the_original(
    request: pytest.FixtureRequest, fixture: str, tiny: str, tiny_sd15_dir: Path, tiny_sd2_dir: Path
) -> None:
    path = request.getfixturevalue(fixture)
    config = tiny_sd15_dir if "sd15" in fixture else tiny_sd2_dir
    loaded, original = load_model(path, config=config), load_model(tiny)
    for component in ("unet", "vae", "text_encoder"):
        assert _same_weights(getattr(loaded, component), getattr(original, component)), component
    assert loaded.model_type == original.model_type
    assert loaded.prediction_type == original.prediction_type
    assert len(loaded.tokenizer) == 1514


def test_tiny_name_serves_as_architecture_and_tokenizer(sd2_single_file: Path) -> None:
    model = load_model(sd2_single_file, config="tiny:sd2-v", dtype="fp16")
    assert model.unet.dtype == torch.float16
    assert (model.model_type, model.prediction_type) == ("sd2", "v_prediction")


def test_shipped_config_of_another_size_is_refused_with_a_hint(sd15_single_file: Path, tiny_sd15_dir: Path) -> None:
    with pytest.raises(UserError, match="does not match the shipped sd15 config") as info:
        load_model(sd15_single_file, tokenizer=tiny_sd15_dir)
    assert "--config" in (info.value.hint or "")


def test_explicit_tokenizer_folder_is_used(sd15_single_file: Path, tiny_sd15_dir: Path, tmp_path: Path) -> None:
    config_only = tmp_path / "architecture"
    for part in ("unet", "vae", "text_encoder", "scheduler"):
        (config_only / part).mkdir(parents=True)
        for file in (tiny_sd15_dir / part).glob("*.json"):
            (config_only / part / file.name).write_text(file.read_text())
    with pytest.raises(UserError, match="no tokenizer is reachable that fits") as info:
        load_model(sd15_single_file, config=config_only)
    assert "HF_HUB_OFFLINE" in (info.value.hint or "")
    model = load_model(sd15_single_file, config=config_only, tokenizer=tiny_sd15_dir / "tokenizer")
    assert model.tokenizer("a photo").input_ids == load_model("tiny:sd15").tokenizer("a photo").input_ids


def test_prediction_type_override_beats_file_metadata(sd2_single_file: Path) -> None:
    model = load_model(sd2_single_file, config="tiny:sd2-v", prediction_type="epsilon")
    assert model.prediction_type == model.noise_scheduler.config.prediction_type == "epsilon"


def test_weights_only_ckpt_loads_like_the_safetensors(sd15_single_file: Path, tmp_path: Path) -> None:
    ckpt = tmp_path / "model.ckpt"
    with WeightsFile(sd15_single_file) as weights:
        torch.save({"state_dict": {k: weights.tensor(k) for k in weights}, "global_step": 1}, ckpt)
    a = load_model(ckpt, config="tiny:sd15")
    b = load_model(sd15_single_file, config="tiny:sd15")
    assert _same_weights(a.unet, b.unet)
    assert _same_weights(a.text_encoder, b.text_encoder)


def test_ckpt_needing_full_unpickling_is_refused(tmp_path: Path) -> None:
    ckpt = tmp_path / "lightning.ckpt"
    torch.save({"state_dict": {"w": torch.ones(1)}, "hyper_parameters": argparse.Namespace(lr=1.0)}, ckpt)
    with pytest.raises(UserError, match="is refused: besides tensors it holds Python objects"):
        load_model(ckpt, config="tiny:sd15")


def test_corrupt_safetensors_is_a_user_error(tmp_path: Path) -> None:
    header = json.dumps({"w": {"dtype": "F32", "shape": [1000], "data_offsets": [0, 4000]}}).encode()
    path = tmp_path / "truncated.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 16)
    with pytest.raises(UserError):
        load_model(path)


def test_checkpoint_of_another_family_names_it(sd2_single_file: Path) -> None:
    with pytest.raises(UserError, match=r"model type sd15 was asked for, but .* is a SD 2\.x model") as info:
        load_model(sd2_single_file, model_type="sd15", config="tiny:sd15")
    assert "sd2" in (info.value.hint or "")


def test_checkpoint_of_an_unregistered_family_is_refused_with_the_known_ones(tmp_path: Path) -> None:
    """A checkpoint of a made-up architecture shares the `model.diffusion_model.` prefix, but no family claims it."""
    path = tmp_path / "zeta.safetensors"
    save_file(
        {
            "model.diffusion_model.zeta_blocks.0.attn.qkv.weight": torch.zeros(9, 3),
            "text_encoders.zeta_te.transformer.text_model.embeddings.token_embedding.weight": torch.zeros(8, 4),
        },
        str(path),
    )
    with pytest.raises(UserError, match="is not a model, LoRA or embedding this tool knows") as info:
        load_model(path)
    assert f"{', '.join(spec.title for spec in families())} checkpoints" in (info.value.hint or "")
    assert "SD 1.x, SD 2.x" in (info.value.hint or "")


def test_a_partial_sdxl_checkpoint_is_recognised_and_refused_as_incomplete(tmp_path: Path) -> None:
    path = tmp_path / "xl.safetensors"
    save_file(
        {
            "conditioner.embedders.1.model.token_embedding.weight": torch.zeros(8, 4),
            "model.diffusion_model.input_blocks.0.0.weight": torch.zeros(4, 4, 3, 3),
        },
        str(path),
    )
    with pytest.raises(UserError, match="has no CLIP ViT-L text encoder weights; it is not a complete checkpoint"):
        load_model(path)


@pytest.mark.parametrize(("channels", "what"), [(9, "inpainting"), (8, "instruct-pix2pix")])
def test_a_unet_taking_more_than_the_latents_is_refused_before_anything_is_read(
    sd15_single_file: Path, tmp_path: Path, channels: int, what: str
) -> None:
    """An inpainting (9 channels) or instruct-pix2pix (8) UNet would load and only fail at the first step."""
    conv_in = "model.diffusion_model.input_blocks.0.0.weight"
    with WeightsFile(sd15_single_file) as weights:
        tensors = {k: weights.tensor(k) for k in weights}
    tensors[conv_in] = torch.zeros(tensors[conv_in].shape[0], channels, 3, 3)
    path = tmp_path / f"{what}.safetensors"
    save_file(tensors, str(path))
    with pytest.raises(
        UserError,
        match=rf"is an inpainting or instruct-pix2pix model: its UNet takes {channels} input "
        "channels; onetrainer trains text-to-image models with 4",
    ) as info:
        load_model(path, config="tiny:sd15")
    assert info.value.where == "model.base"


def _without_unet(single_file: Path, path: Path, *, ema: bool) -> Path:
    """The file with its UNet removed, or (`ema`) kept only as CompVis' EMA copy (`model_ema.*`, dots dropped)."""
    with WeightsFile(single_file) as weights:
        tensors = {k: weights.tensor(k) for k in weights if not k.startswith("model.diffusion_model.")}
        if ema:
            for key in weights:
                if key.startswith("model.diffusion_model."):
                    tensors["model_ema." + key.removeprefix("model.").replace(".", "")] = weights.tensor(key) + 1
            tensors["model_ema.decay"] = torch.tensor(0.9999)
    save_file(tensors, str(path))
    return path


def test_a_unet_held_only_as_an_ema_copy_is_refused_not_taken_from_the_config(
    sd15_single_file: Path, tmp_path: Path, tiny_sd15_dir: Path
) -> None:
    """`model.config` supplies missing text encoders or a VAE, never the UNet the file is for."""
    path = _without_unet(sd15_single_file, tmp_path / "ema-only.safetensors", ema=True)
    with pytest.raises(UserError, match=r"holds its UNet only as an EMA copy \(model_ema\.\*\)") as info:
        load_model(path, config=tiny_sd15_dir)
    assert info.value.where == "model.base"


def test_a_file_without_its_unet_is_refused_even_with_a_config(sd15_single_file: Path, tmp_path: Path) -> None:
    path = _without_unet(sd15_single_file, tmp_path / "no-unet.safetensors", ema=False)
    with pytest.raises(UserError, match="has no UNet weights") as info:
        load_model(path, config="tiny:sd15")
    assert "supplies only the text encoders, tokenizers and VAE" in (info.value.hint or "")


def _without_vae(source: Path, path: Path) -> Path:
    """`source` without its VAE (`first_stage_model.*`), as pruned checkpoints come, saved to `path`."""
    with WeightsFile(source) as weights:
        save_file({k: weights.tensor(k) for k in weights if not k.startswith("first_stage_model.")}, str(path))
    return path


def test_checkpoint_without_vae_says_so(sd15_single_file: Path, tmp_path: Path) -> None:
    path = _without_vae(sd15_single_file, tmp_path / "unet-and-te.safetensors")
    with pytest.raises(UserError, match="has no VAE weights") as info:
        load_model(path)
    assert "--vae" not in (info.value.hint or ""), "no command has a --vae option"
    assert "model.vae" in (info.value.hint or "")
    assert "model.config (--config for sample and convert)" in (info.value.hint or "")


def test_a_checkpoint_pruned_of_its_vae_is_complete_with_model_vae(
    sd15_single_file: Path, tmp_path: Path, tiny_sd15_dir: Path
) -> None:
    """`model.vae` supplies the VAE itself: nothing is asked of `model.config` (here an architecture alone)."""
    path = _without_vae(sd15_single_file, tmp_path / "no-vae.safetensors")
    architecture = tmp_path / "architecture"
    for part in ("unet", "vae", "text_encoder", "scheduler"):
        (architecture / part).mkdir(parents=True)
        for file in (tiny_sd15_dir / part).glob("*.json"):
            (architecture / part / file.name).write_text(file.read_text())
    loaded = load_model(
        path, config=architecture, tokenizer=tiny_sd15_dir / "tokenizer", vae=str(tiny_sd15_dir / "vae")
    )
    assert _same_weights(loaded.vae, load_model(tiny_sd15_dir).vae)


def test_a_part_the_checkpoint_lacks_comes_from_the_config_model(
    sd15_single_file: Path, tmp_path: Path, tiny_sd15_dir: Path
) -> None:
    """A UNet and text encoder saved without their VAE load with the VAE of the model `config` names."""
    path = _without_vae(sd15_single_file, tmp_path / "unet-and-te.safetensors")
    loaded = load_model(path, config=str(tiny_sd15_dir))
    reference = load_model(tiny_sd15_dir)
    for name in ("vae", "unet"):
        ours, theirs = loaded.components[name].state_dict(), reference.components[name].state_dict()
        assert all(torch.equal(ours[key], theirs[key]) for key in theirs)


def test_a_config_model_of_another_family_cannot_supply_the_missing_parts(
    sd15_single_file: Path, tmp_path: Path
) -> None:
    path = _without_vae(sd15_single_file, tmp_path / "unet-and-te.safetensors")
    with pytest.raises(UserError, match=r"model\.config names a SD 2\.x model") as info:
        load_model(path, model_type="sd15", config="tiny:sd2")
    assert info.value.where == "model.config"


def test_single_file_takes_a_small_tokenizer_that_fits_and_refuses_one_that_does_not(
    tmp_path: Path, tiny_sd15_dir: Path, small_tokenizer
) -> None:
    from onetrainer.model_saver.diffusion import DiffusionSaver
    from onetrainer.util.enums import TrainingMethod

    model = load_model(tiny_sd15_dir)
    model.text_encoder.resize_token_embeddings(len(small_tokenizer))
    model.tokenizers["tokenizer"] = small_tokenizer
    folder = DiffusionSaver().save(model, tmp_path / "small", method=TrainingMethod.FULL, dtype=None)[0]
    single = DiffusionSaver().save(model, tmp_path / "small.safetensors", method=TrainingMethod.FULL)[0]

    loaded = load_model(single, config=folder)
    assert len(loaded.tokenizer) == loaded.text_encoder.config.vocab_size == 100
    with pytest.raises(UserError, match="no CLIP tokenizer of 100 tokens"):
        load_model(single, config=folder, tokenizer=tiny_sd15_dir / "tokenizer")


def test_a_cached_hub_tokenizer_that_does_not_fit_is_named_as_such_offline(
    tmp_path: Path,
    tiny_sd15_dir: Path,
    small_tokenizer,
    monkeypatch: pytest.MonkeyPatch,
    cache_hub_model: Callable[[str, Path], Path],
) -> None:
    """Offline, a hub tokenizer that is cached but too large is a mismatch, not 'not on this machine'."""
    from onetrainer.model_saver.diffusion import DiffusionSaver
    from onetrainer.util.enums import TrainingMethod

    model = load_model(tiny_sd15_dir)
    model.text_encoder.resize_token_embeddings(len(small_tokenizer))
    model.tokenizer = small_tokenizer
    folder = DiffusionSaver().save(model, tmp_path / "small", method=TrainingMethod.FULL, dtype=None)[0]
    single = DiffusionSaver().save(model, tmp_path / "small.safetensors", method=TrainingMethod.FULL)[0]
    cache_hub_model("onetrainer-test/tiny-sd15", tiny_sd15_dir)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    with pytest.raises(UserError, match="has 1,514 tokens, more than the text encoder's 100") as info:
        load_model(single, config=folder, tokenizer="onetrainer-test/tiny-sd15")
    assert info.value.where == "model.tokenizer"
    assert "not on this machine" not in info.value.message
