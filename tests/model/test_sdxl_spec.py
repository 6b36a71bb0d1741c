"""The SDXL spec: its facts, its shipped architecture, and how its files are recognised."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from onetrainer.model.configs import config_dir
from onetrainer.model_loader.architecture import resolve_architecture
from onetrainer.util.detect import detect_path, detect_weights
from onetrainer.util.family import Objective, Role, get_family, recognise
from onetrainer.util.registry import ModuleKind, supporting
from onetrainer.util.safetensors_meta import modelspec_architecture, ss_metadata

SDXL = get_family("sdxl")


def test_sdxl_is_registered_with_every_module_kind() -> None:
    kinds = (ModuleKind.LOADER, ModuleKind.SETUP, ModuleKind.SAMPLER, ModuleKind.SAVER)
    assert "sdxl" in supporting(kinds)


def test_components_name_their_roles_tokenizers_and_file_keys() -> None:
    assert SDXL.title == "SDXL"
    assert [(c.name, c.role) for c in SDXL.components] == [
        ("unet", Role.DENOISER),
        ("text_encoder", Role.TEXT_ENCODER),
        ("text_encoder_2", Role.TEXT_ENCODER),
        ("vae", Role.VAE),
    ]
    te1, te2 = SDXL.text_encoders
    assert (te1.tokenizer, te1.kohya_prefix, te1.embedding_key, te1.pad_token) == (
        "tokenizer",
        "lora_te1_",
        "clip_l",
        None,
    )
    assert (te2.tokenizer, te2.kohya_prefix, te2.embedding_key, te2.pad_token) == (
        "tokenizer_2",
        "lora_te2_",
        "clip_g",
        "!",
    )
    assert SDXL.denoiser.kohya_prefix == "lora_unet_"


def test_training_facts() -> None:
    assert SDXL.objective is Objective.DDPM
    assert (SDXL.latent_channels, SDXL.bucket_step, SDXL.patch_size, SDXL.default_resolution) == (4, 64, 1, 1024)
    assert SDXL.size_step == 8, "sampling sizes stay multiples of 8; only buckets are coarser"
    assert SDXL.methods == {"lora", "full", "embedding"}


def test_other_tools_names_for_sdxl() -> None:
    assert modelspec_architecture(SDXL) == "stable-diffusion-xl-v1-base"
    assert modelspec_architecture(SDXL, adapter="lora") == "stable-diffusion-xl-v1-base/lora"
    assert modelspec_architecture(SDXL, adapter="embedding") == "stable-diffusion-xl-v1-base/textual-inversion"
    assert ss_metadata(spec=SDXL, prediction_type="epsilon") == {
        "ss_base_model_version": "sdxl_base_v1-0",
        "ss_v2": "False",
    }
    assert ss_metadata(spec=SDXL, prediction_type="v_prediction")["ss_base_model_version"] == "sdxl_base_v1-0"


def test_shipped_architecture_is_the_released_model() -> None:
    """Parameter counts of stable-diffusion-xl-base-1.0's UNet, VAE, CLIP-L and OpenCLIP bigG (with projection)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    architecture = resolve_architecture(None, SDXL, None)
    configs = architecture.configs
    with torch.device("meta"):
        modules = (
            UNet2DConditionModel.from_config(configs["unet"]),
            AutoencoderKL.from_config(configs["vae"]),
            CLIPTextModel(CLIPTextConfig.from_dict(configs["text_encoder"])),
            CLIPTextModelWithProjection(CLIPTextConfig.from_dict(configs["text_encoder_2"])),
        )
    counts = tuple(sum(p.numel() for p in module.parameters()) for module in modules)
    assert counts == (2_567_463_684, 83_653_863, 123_060_480, 694_659_840)
    assert architecture.classes["text_encoder_2"] == ("transformers", "CLIPTextModelWithProjection")
    assert architecture.settings == {"force_zeros_for_empty_prompt": True}
    assert (configs["vae"]["scaling_factor"], configs["vae"]["force_upcast"]) == (0.13025, True)
    scheduler = configs["scheduler"]
    assert (scheduler["_class_name"], scheduler["prediction_type"], scheduler["timestep_spacing"]) == (
        "EulerDiscreteScheduler",
        "epsilon",
        "leading",
    )


def test_shipped_folder_holds_configs_only() -> None:
    folder = config_dir("sdxl")
    files = {path.relative_to(folder).as_posix() for path in folder.rglob("*") if path.is_file()}
    assert files == {
        "model_index.json",
        "scheduler/scheduler_config.json",
        "unet/config.json",
        "vae/config.json",
        "text_encoder/config.json",
        "text_encoder_2/config.json",
    }


def test_diffusers_folder_is_detected(tiny_sdxl_dir: Path) -> None:
    detection = detect_path(tiny_sdxl_dir)
    assert (detection.kind, detection.family) == ("model", "sdxl")


BIGG = "conditioner.embedders.1.model.positional_embedding"
LABEL = "model.diffusion_model.label_emb.0.0.weight"
SD_UNET = "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"


@pytest.mark.parametrize(
    ("shapes", "family"),
    [
        ({BIGG: (77, 1280), SD_UNET: (640, 2048)}, "sdxl"),
        ({LABEL: (1280, 2816), SD_UNET: (640, 2048)}, "sdxl"),
        ({LABEL: (8, 80)}, "sdxl"),
        ({"cond_stage_model.transformer.text_model.embeddings.position_embedding.weight": (77, 768)}, "sd15"),
    ],
)
def test_single_files_are_told_apart(shapes: dict[str, tuple[int, ...]], family: str) -> None:
    evidence = recognise("single_file", shapes)
    assert evidence is not None
    assert evidence.family == family


def test_the_refiner_is_not_taken_for_the_base_model() -> None:
    refiner = {"conditioner.embedders.0.model.text_projection": (1280, 1280), LABEL: (1280, 2560)}
    evidence = recognise("single_file", refiner)
    assert evidence is None or evidence.family != "sdxl"


def test_a_v_prediction_marker_is_read() -> None:
    evidence = recognise("single_file", {BIGG: (77, 1280), "v_pred": (0,)})
    assert evidence is not None
    assert (evidence.family, evidence.prediction_type) == ("sdxl", "v_prediction")


@pytest.mark.parametrize(
    "key",
    [
        "lora_te2_text_model_encoder_layers_0_mlp_fc1.lora_down.weight",
        "lora_unet_input_blocks_4_1_proj_in.lora_down.weight",
        "lora_unet_output_blocks_2_2_conv.lora_down.weight",
        "text_encoder_2.text_model.encoder.layers.0.mlp.fc1.lora_A.weight",
        "unet.down_blocks.1.attentions.0.transformer_blocks.1.attn1.to_q.lora_A.weight",
    ],
)
def test_loras_are_recognised(key: str) -> None:
    detection = detect_weights({key: (4, 64)}, {})
    assert (detection.kind, detection.family) == ("lora", "sdxl")


def test_embedding_pair_is_recognised() -> None:
    detection = detect_weights({"clip_l": (2, 768), "clip_g": (2, 1280)}, {})
    assert (detection.kind, detection.layout, detection.family) == ("embedding", "a1111", "sdxl")


def test_tiny_model_pads_its_second_prompt_as_sdxl_does() -> None:
    from onetrainer.util.tiny.models import build_tiny_sdxl_pipeline

    pipe = build_tiny_sdxl_pipeline()
    assert (pipe.tokenizer.pad_token, pipe.tokenizer_2.pad_token) == ("<|endoftext|>", "!")
