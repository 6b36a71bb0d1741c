"""OneTrainer's own configs through `onetrainer import`, `train CONFIG.json` and `export`, end to end.

The four configs are written here from the format reference (docs: OneTrainer's TrainConfig v11): a
sparse built-in-style preset (no `__version`), a full UI export at the current version (concepts and
samples inline), a `__version` 2 file with its concept and sample lists in files beside it (migrated),
and one that uses settings onetrainer cannot honour.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from onetrainer.commands.app import app
from onetrainer.util.config.onetrainer_json.import_adapters import EVERY_LAYER, filter_regex

runner = CliRunner()
FAST = ("data.resolution=64", "training.max_steps=2", "sampling.every=never", "data.workers=0")


def invoke(*args: object) -> Any:
    return runner.invoke(app, [str(arg) for arg in args], terminal_width=200)


def write(path: Path, data: Any) -> Path:
    path.write_text(json.dumps(data, indent=2), encoding="utf-8")
    return path


def sparse_preset(folder: Path, dataset: Path) -> Path:
    """Like OneTrainer's `training_presets/#sd 1.5 LoRA.json`: only what differs from the defaults."""
    return write(
        folder / "sd15-lora-preset.json",
        {
            "model_type": "STABLE_DIFFUSION_15",
            "base_model_name": "tiny:sd15",
            "training_method": "LORA",
            "output_model_format": "DIFFUSERS_LORA",
            "output_model_destination": "models/lora.safetensors",
            "resolution": "512",
            "batch_size": 4,
            "learning_rate": 0.0003,
            "train_dtype": "BFLOAT_16",
            "output_dtype": "BFLOAT_16",
            "text_encoder": {"train": False, "weight_dtype": "FLOAT_16"},
            "vae": {"weight_dtype": "FLOAT_32"},
            "layer_filter_preset": "attn-mlp",
            "layer_filter": "attentions",
            "weight_dtype": "BFLOAT_16",
        },
    )


def _part(**values: Any) -> dict[str, Any]:
    part = {
        "__version": 0,
        "model_name": "",
        "include": True,
        "train": True,
        "stop_training_after": None,
        "stop_training_after_unit": "NEVER",
        "learning_rate": None,
        "weight_dtype": "FLOAT_32",
        "dropout_probability": 0.0,
        "train_embedding": True,
        "attention_mask": False,
        "guidance_scale": 1.0,
        "gradient_checkpointing": True,
        "offload_fraction": 0.0,
        "activation_offloading": False,
    }
    return {**part, **values}


def _concept(path: Path, **values: Any) -> dict[str, Any]:
    image = {
        "__version": 0,
        "enable_crop_jitter": True,
        "enable_random_flip": True,
        "enable_fixed_flip": False,
        "enable_random_rotate": True,
        "enable_fixed_rotate": False,
        "random_rotate_max_angle": 10.0,
        "enable_random_brightness": True,
        "enable_fixed_brightness": False,
        "random_brightness_max_strength": 0.1,
        "enable_random_contrast": False,
        "enable_fixed_contrast": False,
        "random_contrast_max_strength": 0.0,
        "enable_random_saturation": False,
        "enable_fixed_saturation": False,
        "random_saturation_max_strength": 0.0,
        "enable_random_hue": False,
        "enable_fixed_hue": False,
        "random_hue_max_strength": 0.0,
        "enable_resolution_override": False,
        "resolution_override": "512",
        "enable_random_circular_mask_shrink": False,
        "enable_random_mask_rotate_crop": False,
    }
    text = {
        "__version": 0,
        "prompt_source": "sample",
        "prompt_path": "",
        "enable_tag_shuffling": True,
        "tag_delimiter": ",",
        "keep_tags_count": 1,
        "tag_dropout_enable": True,
        "tag_dropout_mode": "RANDOM",
        "tag_dropout_probability": 0.1,
        "tag_dropout_special_tags_mode": "WHITELIST",
        "tag_dropout_special_tags": "red, blue",
        "tag_dropout_special_tags_regex": False,
        "caps_randomize_enable": False,
        "caps_randomize_mode": "capslock, title, first, random",
        "caps_randomize_probability": 0.0,
        "caps_randomize_lowercase": False,
    }
    concept = {
        "__version": 2,
        "image": image,
        "text": text,
        "name": "shapes",
        "path": str(path),
        "seed": -12345,
        "enabled": True,
        "type": "STANDARD",
        "include_subdirectories": False,
        "image_variations": 1,
        "text_variations": 2,
        "balancing": 2.0,
        "balancing_strategy": "REPEATS",
        "loss_weight": 0.5,
        "concept_stats": {"file_count": 16},
    }
    return {**concept, **values}


def _sample(prompt: str, **values: Any) -> dict[str, Any]:
    sample = {
        "__version": 0,
        "enabled": True,
        "prompt": prompt,
        "negative_prompt": "blurry",
        "width": 64,
        "height": 64,
        "frames": 1,
        "length": 10.0,
        "seed": 7,
        "random_seed": False,
        "diffusion_steps": 2,
        "cfg_scale": 4.0,
        "noise_scheduler": "EULER_A",
        "text_encoder_1_layer_skip": 0,
        "text_encoder_2_layer_skip": 0,
        "text_encoder_3_layer_skip": 0,
        "text_encoder_4_layer_skip": 0,
        "text_encoder_1_sequence_length": None,
        "text_encoder_2_sequence_length": None,
        "transformer_attention_mask": False,
        "force_last_timestep": False,
        "sample_inpainting": False,
        "base_image_path": "",
        "mask_image_path": "",
    }
    return {**sample, **values}


def full_export(folder: Path, dataset: Path) -> Path:
    """A UI "Export" at `__version` 11: every key, concepts and samples inline (the files do not exist)."""
    from onetrainer.util.config.onetrainer_json.defaults import train_defaults

    config = train_defaults()
    parts = ("unet", "prior", "transformer", "text_encoder", "text_encoder_2", "text_encoder_3", "text_encoder_4")
    for name in (*parts, "unconditional_transformer", "vae", "effnet_encoder", "decoder", "decoder_text_encoder"):
        config[name] = _part()
    config["decoder_vqgan"] = _part()
    config["unet"] = _part(stop_training_after=0, learning_rate=0.0005, gradient_checkpointing=False)
    config["text_encoder"] = _part(
        stop_training_after=1, stop_training_after_unit="EPOCH", learning_rate=0.00005, dropout_probability=0.1
    )
    config.update(
        {
            "training_method": "LORA",
            "model_type": "STABLE_DIFFUSION_15",
            "base_model_name": "tiny:sd15",
            "workspace_dir": str(folder / "workspace"),
            "cache_dir": str(folder / "cache"),
            "output_model_destination": str(folder / "out" / "full-export.safetensors"),
            "output_model_format": "KOHYA_LORA",
            "output_dtype": "FLOAT_32",
            "train_dtype": "FLOAT_32",
            "train_device": "cpu",
            "resolution": "64",
            "dataloader_threads": 0,
            "learning_rate": 0.001,
            "learning_rate_scheduler": "COSINE",
            "learning_rate_warmup_steps": 0.1,
            "epochs": 3,
            "batch_size": 2,
            "clip_grad_norm": 2.0,
            "ema": "CPU",
            "ema_decay": 0.99,
            "ema_update_step_interval": 1,
            "non_ema_sampling": False,
            "offset_noise_weight": 0.05,
            "timestep_distribution": "LOGIT_NORMAL",
            "noising_weight": 0.5,
            "noising_bias": 0.25,
            "loss_weight_fn": "MIN_SNR_GAMMA",
            "loss_weight_strength": 3.0,
            "text_encoder_layer_skip": 1,
            "lora_rank": 4,
            "lora_alpha": 4.0,
            "dropout_probability": 0.05,
            "lora_decompose": True,
            "layer_filter_preset": "attn-only",
            "layer_filter": "attn",
            "sample_after": 1,
            "sample_after_unit": "EPOCH",
            "backup_after": 1,
            "backup_after_unit": "EPOCH",
            "rolling_backup": True,
            "rolling_backup_count": 2,
            "save_every": 2,
            "save_every_unit": "STEP",
            "validation": True,
            "validate_after": 1,
            "validate_after_unit": "EPOCH",
        }
    )
    config["optimizer"] = {**config["optimizer"], "optimizer": "ADAMW", "beta1": 0.85, "beta2": 0.99, "eps": 1e-7}
    config["optimizer"]["weight_decay"] = 0.02
    config["optimizer_defaults"] = {"ADAMW": dict(config["optimizer"])}
    config["concepts"] = [
        _concept(dataset),
        _concept(dataset, name="held-out", type="VALIDATION", balancing=1.0, loss_weight=1.0),
    ]
    config["samples"] = [_sample("a red circle"), _sample("a blue square", enabled=False)]
    return write(folder / "full-export.json", config)


def old_version(folder: Path, dataset: Path) -> Path:
    """A `__version` 2 file (spring 2024): its concept and sample lists in files beside it."""
    lists = folder / "lists"
    lists.mkdir()
    write(lists / "concepts.json", [{"path": str(dataset), "repeats": 3.0, "validation_concept": False}])
    write(lists / "samples.json", [{"prompt": "a green triangle", "width": 64, "height": 64, "diffusion_steps": 2}])
    return write(
        folder / "old.json",
        {
            "__version": 2,
            "training_method": "LORA",
            "model_type": "STABLE_DIFFUSION_15",
            "base_model_name": "tiny:sd15",
            "concept_file_name": "lists/concepts.json",
            "sample_definition_file_name": "lists/samples.json",
            "min_snr_gamma": 5.0,
            "noising_weight": 7.0,
            "noising_bias": 0.8,
            "gradient_checkpointing": False,
            "save_after": 1,
            "save_after_unit": "EPOCH",
            "lora_layers": "attentions",
            "output_model_format": "SAFETENSORS",
            "weight_dtype": "FLOAT_32",
            "unet": {"train": True, "weight_dtype": "NONE", "learning_rate": 0.0002},
            "text_encoder": {"train": False, "weight_dtype": "NONE"},
            "vae": {"weight_dtype": "NONE"},
            "optimizer": {"optimizer": "ADAMW", "weight_decay": 0.05},
            "train_dtype": "FLOAT_32",
        },
    )


def with_unsupported(folder: Path, dataset: Path) -> Path:
    """Settings onetrainer cannot honour, at the top level, in a part, the optimizer, a concept and a sample."""
    concept = _concept(dataset)
    concept["image"]["enable_fixed_rotate"] = True
    return write(
        folder / "unsupported.json",
        {
            "__version": 11,
            "training_method": "LORA",
            "model_type": "STABLE_DIFFUSION_21_BASE",
            "base_model_name": "tiny:sd2",
            "force_circular_padding": True,
            "timestep_distribution": "HEAVY_TAIL",
            "learning_rate_scheduler": "REX",
            "vae": {"weight_dtype": "NFLOAT_4"},
            "optimizer": {"optimizer": "ADAMW", "fused_back_pass": True},
            "gradient_accumulation_steps": 2,
            "cloud": {"enabled": True, "type": "RUNPOD"},
            "train_dtype": "FLOAT_32",
            "concepts": [concept],
            "samples": [_sample("a red circle", random_seed=True)],
        },
    )


UNSUPPORTED_KEYS = (
    "force_circular_padding",
    "timestep_distribution",
    "learning_rate_scheduler",
    "vae.weight_dtype",
    "optimizer.fused_back_pass",
    "cloud.enabled",
    "concepts.0.image.enable_fixed_rotate",
    "samples.0.random_seed",
)


def flux_lora(folder: Path, dataset: Path) -> Path:
    """A FLUX.1 LoRA on an nf4 transformer with half its blocks offloaded (which nf4 cannot be) and its
    activations offloaded, the text encoders in fp8 and int8, guidance and the T5 length set."""
    return write(
        folder / "flux-lora.json",
        {
            "__version": 11,
            "training_method": "LORA",
            "model_type": "FLUX_DEV_1",
            "base_model_name": "tiny:flux-dev",
            "output_model_format": "DIFFUSERS_LORA",
            "output_model_destination": str(folder / "out" / "flux-lora.safetensors"),
            "train_dtype": "BFLOAT_16",
            "output_dtype": "BFLOAT_16",
            "resolution": "64",
            "compile": True,
            "timestep_distribution": "LOGIT_NORMAL",
            "dynamic_timestep_shifting": True,
            "layer_filter_preset": "attn-mlp",
            "layer_filter": "attn,ff.net,proj_mlp",
            "text_encoder_2_sequence_length": 256,
            "transformer": _part(
                weight_dtype="NFLOAT_4", offload_fraction=0.5, activation_offloading=True, guidance_scale=3.5
            ),
            "text_encoder": _part(train=False, weight_dtype="FLOAT_8"),
            "text_encoder_2": _part(train=False, weight_dtype="INT_8"),
            "vae": _part(weight_dtype="FLOAT_32"),
            "concepts": [_concept(dataset)],
            "samples": [_sample("a red circle", cfg_scale=3.5, noise_scheduler="EULER")],
        },
    )


def sd35_lora(folder: Path, dataset: Path) -> Path:
    """An SD 3.5 Medium LoRA without T5, its transformer in fp8 with a quarter of its blocks offloaded."""
    return write(
        folder / "sd35-lora.json",
        {
            "__version": 11,
            "training_method": "LORA",
            "model_type": "STABLE_DIFFUSION_35",
            "base_model_name": "tiny:sd35-medium",
            "output_model_format": "DIFFUSERS_LORA",
            "train_dtype": "BFLOAT_16",
            "resolution": "64",
            "timestep_distribution": "LOGIT_NORMAL",
            "timestep_shift": 3.0,
            "transformer": _part(weight_dtype="FLOAT_8", offload_fraction=0.25),
            "text_encoder": _part(train=False, weight_dtype="BFLOAT_16"),
            "text_encoder_2": _part(train=False, weight_dtype="BFLOAT_16"),
            "text_encoder_3": _part(include=False, train=False),
            "concepts": [_concept(dataset)],
            "samples": [_sample("a red circle", noise_scheduler="EULER")],
        },
    )


def sdxl_fused(folder: Path, dataset: Path) -> Path:
    """Like OneTrainer's large fine-tune presets: ADAFACTOR's settings (fused back pass, its default stochastic
    rounding) only in `optimizer_defaults`; a bf16 text encoder trains beside an fp8 UNet and text encoder 2."""
    return write(
        folder / "sdxl-fused.json",
        {
            "model_type": "STABLE_DIFFUSION_XL_10_BASE",
            "base_model_name": "tiny:sdxl",
            "training_method": "FINE_TUNE",
            "output_model_format": "ORIGINAL_SINGLE_FILE",
            "output_model_destination": "models/model.safetensors",
            "resolution": "64",
            "train_dtype": "BFLOAT_16",
            "clip_grad_norm": None,
            "unet": {"train": False, "weight_dtype": "FLOAT_8"},
            "text_encoder": {"train": True, "weight_dtype": "BFLOAT_16", "stop_training_after_unit": "NEVER"},
            "text_encoder_2": {"train": False, "weight_dtype": "FLOAT_8"},
            "optimizer": {"optimizer": "ADAFACTOR"},
            "optimizer_defaults": {"ADAFACTOR": {"optimizer": "ADAFACTOR", "fused_back_pass": True}},
        },
    )


SCENARIOS: dict[str, Callable[[Path, Path], Path]] = {
    "sparse-preset": sparse_preset,
    "full-export": full_export,
    "old-version": old_version,
    "unsupported": with_unsupported,
}
MEMORY_SCENARIOS: dict[str, Callable[[Path, Path], Path]] = {
    "flux-lora": flux_lora,
    "sd35-lora": sd35_lora,
    "sdxl-fused": sdxl_fused,
}
"""Configs with OneTrainer's memory settings (quantised weights, offloading, the fused back pass): they import,
pass the check and export stably. They are not trained here, to keep the CPU run short: the training paths of
those settings have tests of their own (tests/model_setup/test_weight_dtypes.py, test_offload.py,
tests/trainer/test_memory_steps.py)."""
ALL_SCENARIOS = {**SCENARIOS, **MEMORY_SCENARIOS}


def imported(path: Path) -> dict[str, Any]:
    result = invoke("import", path)
    assert result.exit_code == 0, result.output
    return yaml.safe_load(result.stdout)


def test_sparse_preset_reads_onetrainer_defaults_for_missing_keys(tmp_path, shapes_dataset_dir):
    result = invoke("import", sparse_preset(tmp_path, shapes_dataset_dir))
    assert result.exit_code == 0, result.output
    assert "a sparse preset (no __version)" in result.stdout
    assert "Unsupported" not in result.stdout + result.stderr
    assert "no such concept file beside the config or in the working folder, so there are no concepts (give them" in (
        " ".join(result.stderr.split())
    ), "OneTrainer's preset names its concept file, which is not there: a note, the concepts come on the command line"
    assert "weight_dtype = 'BFLOAT_16': not a OneTrainer setting" in result.stderr
    config = yaml.safe_load(result.stdout)
    assert config["model"] == {"type": "sd15", "base": "tiny:sd15"}
    assert config["method"] == "lora"
    assert config["lora"] == {"type": "lora", "rank": 16, "alpha": 1.0, "dropout": 0.0, "targets": "full"}
    assert config["parts"]["unet"]["lora_targets"] == "attn-mlp"
    assert config["parts"]["text_encoder"] == {"train": False, "weight_dtype": "fp16", "layer_skip": 0}
    assert config["training"]["epochs"] == 100
    assert config["training"]["learning_rate"] == 0.0003
    assert config["training"]["batch_size"] == 4
    assert config["training"]["precision"] == "bf16"
    assert config["training"]["warmup"] == 200.0
    assert config["saving"]["format"] == "peft"
    assert config["saving"]["dtype"] == "bf16"
    assert config["sampling"]["every"] == "10 minutes"
    assert config["saving"]["backup_every"] == "30 minutes"
    assert config["data"]["resolution"] == 512
    assert config["data"]["concepts"] == []


def test_full_export_maps_every_section(tmp_path, shapes_dataset_dir):
    config = imported(full_export(tmp_path, shapes_dataset_dir))
    assert config["lora"] == {"type": "dora", "rank": 4, "alpha": 4.0, "dropout": 0.05, "targets": "full"}
    assert config["parts"]["unet"] == {
        "train": True,
        "learning_rate": 0.0005,
        "weight_dtype": "fp32",
        "lora_targets": "attn",
    }
    assert config["parts"]["text_encoder"]["stop_after"] == "1 epoch"
    assert config["parts"]["text_encoder"]["layer_skip"] == 1
    assert config["training"]["gradient_checkpointing"] is False
    assert config["training"]["betas"] == [0.85, 0.99]
    assert config["training"]["eps"] == 1e-7
    assert config["training"]["weight_decay"] == 0.02
    assert config["training"]["ema"] == {"enabled": True, "device": "cpu", "decay": 0.99, "update_every": 1}
    assert config["noise"]["timesteps"]["distribution"] == "logit-normal"
    assert config["noise"]["timesteps"]["mean"] == 0.25
    assert config["noise"]["timesteps"]["std"] == 1.5
    assert config["loss"]["weighting"] == "min-snr-gamma"
    assert config["loss"]["gamma"] == 3.0
    assert config["logging"]["validate_every"] == "1 epoch"
    assert config["saving"]["every"] == "2 steps"
    assert config["saving"]["backup_keep_last"] == 2
    standard, held_out = config["data"]["concepts"]
    assert standard["repeats"] == 2.0
    assert standard["loss_weight"] == 0.5
    assert standard["text_variations"] == 2
    assert standard["seed"] == -12345 % 2**31
    assert standard["image"]["flip"] == 0.5
    assert standard["image"]["rotation"] == 10.0
    assert standard["image"]["brightness"] == 0.1
    assert standard["caption"]["shuffle_tags"] is True
    assert standard["caption"]["keep_tags"] == 1
    assert standard["caption"]["tag_dropout"] == 0.1
    assert standard["caption"]["tag_dropout_keep"] == ["red", "blue"]
    assert "caption_dropout" not in standard["caption"], "OneTrainer drops per text encoder, not per concept"
    assert config["parts"]["text_encoder"]["dropout"] == 0.1, "the text encoder's own dropout"
    assert held_out["type"] == "validation"
    (prompt,) = config["sampling"]["prompts"]
    assert prompt == {
        "prompt": "a red circle",
        "negative_prompt": "blurry",
        "seed": 7,
        "steps": 2,
        "cfg": 4.0,
        "width": 64,
        "height": 64,
        "scheduler": "euler-a",
    }


def test_old_version_is_migrated_and_reads_its_list_files_beside_it(tmp_path, shapes_dataset_dir, monkeypatch):
    monkeypatch.chdir(tmp_path.parent)
    result = invoke("import", old_version(tmp_path, shapes_dataset_dir))
    assert result.exit_code == 0, result.output
    assert "__version 2, migrated to 11" in result.stdout
    assert "output_model_format = 'LEGACY_LORA'" in result.stderr
    config = yaml.safe_load(result.stdout)
    assert config["loss"]["weighting"] == "min-snr-gamma"
    assert config["loss"]["gamma"] == 5.0
    timesteps = config["noise"]["timesteps"]
    assert (timesteps["distribution"], timesteps["steepness"], timesteps["center"]) == ("sigmoid", 7.0, 0.8)
    assert config["training"]["gradient_checkpointing"] is False
    assert config["saving"]["every"] == "1 epoch"
    assert config["saving"]["format"] == "kohya"
    assert config["parts"]["unet"]["lora_targets"] == "attn-mlp", "the layers its filter 'attentions' adapts"
    assert config["parts"]["unet"]["weight_dtype"] == "fp32"
    assert config["training"]["weight_decay"] == 0.05
    (concept,) = config["data"]["concepts"]
    assert (concept["path"], concept["repeats"], concept["type"]) == (str(shapes_dataset_dir), 3.0, "standard")
    assert config["sampling"]["prompts"][0]["prompt"] == "a green triangle"


def test_unsupported_settings_are_yaml_comments_and_stderr_lines(tmp_path, shapes_dataset_dir):
    result = invoke("import", with_unsupported(tmp_path, shapes_dataset_dir))
    assert result.exit_code == 0, result.output
    header = result.stdout.split("\nmodel:")[0]
    assert all(line.startswith("#") for line in header.splitlines())
    for key in UNSUPPORTED_KEYS:
        assert f"#   {key} = " in header, key
        assert f"  {key} = " in result.stderr, key
    assert yaml.safe_load(result.stdout)["model"]["type"] == "sd2"


def test_train_refuses_unsupported_settings_listing_every_one(tmp_path, shapes_dataset_dir):
    result = invoke("train", with_unsupported(tmp_path, shapes_dataset_dir), "--check")
    assert result.exit_code == 2
    assert "Unsupported OneTrainer settings" in result.output
    for key in UNSUPPORTED_KEYS:
        assert f"{key} = " in result.output, key
    assert "--allow-unsupported" in result.output


def test_a_flux_lora_with_nf4_and_offloading_imports_the_settings_it_can_honour(tmp_path, shapes_dataset_dir):
    result = invoke("import", flux_lora(tmp_path, shapes_dataset_dir))
    assert result.exit_code == 0, result.output
    assert "transformer.offload_fraction = 0.5: layer offloading does not take nf4 weights" in result.stderr
    config = yaml.safe_load(result.stdout)
    assert config["model"] == {
        "type": "flux-dev",
        "base": "tiny:flux-dev",
        "options": {"guidance": 3.5, "t5_max_length": 256},
    }
    transformer = config["parts"]["transformer"]
    layers = re.compile(transformer.pop("lora_regex"))  # its attn-mlp adapts fewer layers than ours
    assert transformer == {"train": True, "weight_dtype": "nf4"}
    assert layers.search("transformer_blocks.0.ff.net.0.proj")
    assert layers.search("single_transformer_blocks.0.proj_mlp")
    assert not layers.search("transformer_blocks.0.ff_context.net.0.proj")
    assert not layers.search("single_transformer_blocks.0.proj_out")
    assert config["parts"]["text_encoder"] == {"train": False, "weight_dtype": "fp8"}, "(FLUX.1 reads no hidden layer)"
    assert config["parts"]["text_encoder_2"] == {"train": False, "weight_dtype": "int8"}
    training = config["training"]
    assert (training["gradient_checkpointing"], training["activation_offload"]) == (True, True)
    assert (training["compile"], training["precision"]) == (True, "bf16")
    assert config["noise"]["dynamic_shift"] is True
    refused = invoke("train", tmp_path / "flux-lora.json", "--check")
    assert refused.exit_code == 2
    assert "transformer.offload_fraction" in refused.output


def test_an_sd35_config_picks_the_family_of_its_base_and_leaves_t5_out(tmp_path, shapes_dataset_dir):
    result = invoke("import", sd35_lora(tmp_path, shapes_dataset_dir))
    assert result.exit_code == 0, result.output
    assert "Unsupported" not in result.stdout
    config = yaml.safe_load(result.stdout)
    options = {"t5": False, "t5_max_length": 77}  # OneTrainer reads T5 to CLIP's 77 tokens
    assert config["model"] == {"type": "sd35-medium", "base": "tiny:sd35-medium", "options": options}
    every_layer = filter_regex(EVERY_LAYER, regex=True)  # an empty layer_filter: OneTrainer adapts every layer
    assert config["parts"]["transformer"] == {
        "train": True,
        "weight_dtype": "fp8",
        "offload_blocks": 0.25,
        "lora_regex": every_layer,
    }
    assert config["parts"]["text_encoder_3"] == {"train": False, "weight_dtype": "fp32"}, "(T5: no layer skip)"
    assert config["parts"]["text_encoder"]["weight_dtype"] == "bf16"
    assert config["noise"]["shift"] == 3.0


def test_an_sdxl_fine_tune_with_the_fused_back_pass_and_stochastic_rounding(tmp_path, shapes_dataset_dir):
    result = invoke("import", sdxl_fused(tmp_path, shapes_dataset_dir))
    assert result.exit_code == 0, result.output
    unsupported = result.stdout.split("# Unsupported", 1)[1]
    assert "unet.weight_dtype" in unsupported
    assert "text_encoder_2.weight_dtype" in unsupported
    assert "whole-model files" in unsupported
    config = yaml.safe_load(result.stdout)
    assert config["method"] == "full"
    assert config["parts"]["unet"] == {"train": False, "weight_dtype": "fp32"}, "a full fine-tune saves frozen parts"
    assert config["parts"]["text_encoder"] == {"train": True, "layer_skip": 0, "weight_dtype": "bf16"}
    assert config["parts"]["text_encoder_2"] == {"train": False, "layer_skip": 0, "weight_dtype": "fp32"}
    training = config["training"]
    assert training["optimizer"] == "adafactor"
    assert (training["fused_backward"], training["stochastic_rounding"]) == (True, True)
    assert training["max_grad_norm"] is None


@pytest.mark.parametrize("scenario", ALL_SCENARIOS)
def test_each_config_passes_check(tmp_path, shapes_dataset_dir, scenario, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = ALL_SCENARIOS[scenario](tmp_path, shapes_dataset_dir)
    concept = f"data.concepts.0.path={shapes_dataset_dir}"
    result = invoke("train", path, concept, "--check", "--allow-unsupported")
    assert result.exit_code == 0, result.output
    checked = yaml.safe_load(result.stdout)
    assert checked["model"]["base"].startswith("tiny:")
    assert checked["data"]["concepts"][0]["path"] == str(shapes_dataset_dir)


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_each_config_trains_the_tiny_model(tmp_path, shapes_dataset_dir, scenario, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = SCENARIOS[scenario](tmp_path, shapes_dataset_dir)
    result = invoke(
        "train",
        path,
        f"data.concepts.0.path={shapes_dataset_dir}",
        *FAST,
        "training.device=cpu",
        f"workspace={tmp_path / 'run'}",
        f"saving.output={tmp_path / 'out' / 'trained.safetensors'}",
        "--allow-unsupported",
        "--json",
    )
    assert result.exit_code == 0, result.output
    events = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert [event["step"] for event in events if event["event"] == "step"] == [1, 2]
    assert (tmp_path / "out" / "trained.safetensors").is_file()


@pytest.mark.parametrize("scenario", ALL_SCENARIOS)
def test_import_export_import_gives_the_same_run_config(tmp_path, shapes_dataset_dir, scenario, monkeypatch):
    monkeypatch.chdir(tmp_path)
    first = imported(ALL_SCENARIOS[scenario](tmp_path, shapes_dataset_dir))
    run = tmp_path / "run.yaml"
    run.write_text(yaml.safe_dump(first), encoding="utf-8")
    exported = invoke("export", run, "-o", tmp_path / "again.json")
    assert exported.exit_code == 0, exported.output
    assert "OneTrainer has no place" not in exported.output
    assert imported(tmp_path / "again.json") == first


def test_export_writes_the_current_version_with_concepts_and_samples_inline(tmp_path, shapes_dataset_dir):
    run = tmp_path / "run.yaml"
    run.write_text(yaml.safe_dump(imported(full_export(tmp_path, shapes_dataset_dir))), encoding="utf-8")
    result = invoke("export", run)
    assert result.exit_code == 0, result.output
    config = json.loads(result.stdout)
    assert config["__version"] == 11
    assert config["model_type"] == "STABLE_DIFFUSION_15"
    assert [concept["path"] for concept in config["concepts"]] == [str(shapes_dataset_dir)] * 2
    assert config["concepts"][0]["__version"] == 2
    assert [sample["prompt"] for sample in config["samples"]] == ["a red circle"]
    assert all(name in config for name in ("unet", "prior", "transformer", "decoder_vqgan", "text_encoder_4"))


def test_export_lists_our_settings_onetrainer_has_no_place_for(tmp_path, shapes_dataset_dir):
    run = tmp_path / "run.yaml"
    run.write_text(yaml.safe_dump(imported(sparse_preset(tmp_path, shapes_dataset_dir))), encoding="utf-8")
    result = invoke("export", run, "training.seed=7", "training.max_steps=50", "-o", tmp_path / "out.json")
    assert result.exit_code == 0, result.output
    assert "training.seed = 7: OneTrainer has no such setting" in result.stderr
    assert "training.max_steps = 50: OneTrainer has no such setting" in result.stderr
    assert json.loads((tmp_path / "out.json").read_text())["__version"] == 11


def test_import_writes_the_file_and_refuses_to_overwrite_it(tmp_path, shapes_dataset_dir):
    source = sparse_preset(tmp_path, shapes_dataset_dir)
    target = tmp_path / "run.yaml"
    assert invoke("import", source, "-o", target).exit_code == 0
    assert yaml.safe_load(target.read_text())["model"]["type"] == "sd15"
    again = invoke("import", source, "-o", target)
    assert again.exit_code == 2
    assert "--overwrite" in again.output
    assert invoke("import", source, "-o", target, "--overwrite").exit_code == 0
    assert invoke("export", target, "-o", target).exit_code == 2


@pytest.mark.parametrize("command", ["import", "export"])
@pytest.mark.parametrize(
    ("output", "message"),
    [
        ("{folder}", "the output is a folder, not a file: {folder}"),
        ("{file}/run.yaml", "cannot write {file}/run.yaml: {file} is a file, not a folder"),
        pytest.param(
            "/sys/run.yaml",
            "cannot write into /sys",
            marks=pytest.mark.skipif(not Path("/sys").is_dir(), reason="no read-only /sys here"),
        ),
    ],
)
def test_an_output_that_cannot_be_written_is_refused_before_converting(
    tmp_path, shapes_dataset_dir, command, output, message
):
    """These ended in a traceback's PermissionError, IsADirectoryError or FileExistsError (exit 1), even with
    --overwrite, after the conversion."""
    (tmp_path / "folder").mkdir()
    (tmp_path / "file.png").write_text("x")
    places = {"folder": tmp_path / "folder", "file": tmp_path / "file.png"}
    source = sparse_preset(tmp_path, shapes_dataset_dir)
    if command == "export":
        source = tmp_path / "run.yaml"
        assert invoke("import", sparse_preset(tmp_path, shapes_dataset_dir), "-o", source).exit_code == 0
    result = invoke(command, source, "-o", output.format(**places), "--overwrite")
    assert result.exit_code == 2, result.output
    text = "".join(result.output.replace("│", " ").split())  # Rich folds long paths anywhere
    assert "".join(message.format(**places).split()) in text
    assert "where:--output" in text
    assert "Traceback" not in result.output


def test_a_model_type_without_a_family_here_is_not_supported_in_this_version(tmp_path):
    path = write(tmp_path / "zeta.json", {"__version": 11, "model_type": "ZETA_IMAGE_1", "training_method": "LORA"})
    for command in ("import", "train"):
        result = invoke(command, path)
        assert result.exit_code == 2
        assert "not supported in this version" in result.output
        assert "STABLE_DIFFUSION_15" in result.output


def test_invalid_json_names_the_line(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('{"model_type": "STABLE_DIFFUSION_15",\n  oops}', encoding="utf-8")
    result = invoke("import", path)
    assert result.exit_code == 2
    assert "invalid JSON" in result.output
    assert "broken.json:2" in result.output
