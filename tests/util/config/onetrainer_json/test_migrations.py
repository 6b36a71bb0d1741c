"""OneTrainer's `__version` migrations, step by step, on sparse files (a missing key never fails a step)."""

import pytest

from onetrainer.util.config.onetrainer_json.migrations import migrate, migrate_concept, source_version


def test_a_file_without_version_and_without_old_keys_is_a_preset_and_loads_unmigrated():
    preset = {"training_method": "LORA", "output_model_format": "SAFETENSORS", "noising_weight": 7.7}
    migrated, version = migrate(preset)
    assert version is None
    assert migrated["output_model_format"] == "SAFETENSORS"
    assert migrated["noising_weight"] == 7.7
    assert "__version" not in migrated


def test_a_file_without_version_but_with_flat_keys_is_version_0():
    old = {"optimizer": "ADAMW", "optimizer_weight_decay": 0.05, "train_unet": True, "train_text_encoder_epochs": 5}
    assert source_version(old) == 0
    migrated, version = migrate(old)
    assert version == 0
    assert migrated["__version"] == 11
    assert migrated["optimizer"] == {"optimizer": "ADAMW", "weight_decay": 0.05}
    assert migrated["optimizer_defaults"] == {"ADAMW": {"optimizer": "ADAMW", "weight_decay": 0.05}}
    assert migrated["unet"]["train"] is True
    assert migrated["text_encoder"]["stop_training_after"] == 5
    assert migrated["text_encoder"]["stop_training_after_unit"] == "EPOCH"


def test_version_1_part_keys_and_embedding_move_into_objects():
    migrated, _ = migrate(
        {
            "__version": 1,
            "unet_learning_rate": 1e-4,
            "text_encoder_2_weight_dtype": "FLOAT_16",
            "vae_model_name": "my/vae",
            "embedding_model_names": ["old.safetensors"],
            "token_count": 3,
            "initial_embedding_text": "cat",
        }
    )
    assert migrated["unet"]["learning_rate"] == 1e-4
    assert migrated["text_encoder_2"]["weight_dtype"] == "FLOAT_16"
    assert migrated["vae"]["model_name"] == "my/vae"
    assert migrated["embedding"] == {"model_name": "old.safetensors", "token_count": 3, "initial_embedding_text": "cat"}


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ({"min_snr_gamma": 5.0}, ("MIN_SNR_GAMMA", 5.0)),
        ({"min_snr_gamma": 0.0, "model_type": "STABLE_CASCADE_1"}, ("P2", 1.0)),
    ],
)
def test_version_2_min_snr_gamma_becomes_a_loss_weight_function(given, expected):
    migrated, _ = migrate({"__version": 2, **given})
    assert (migrated["loss_weight_fn"], migrated["loss_weight_strength"]) == expected


def test_version_3_noising_bias_moves_from_one_half_to_zero():
    sigmoid, _ = migrate({"__version": 3, "noising_weight": 4.0, "noising_bias": 0.7})
    assert (sigmoid["timestep_distribution"], sigmoid["noising_weight"]) == ("SIGMOID", 4.0)
    assert sigmoid["noising_bias"] == pytest.approx(0.2)
    uniform, _ = migrate({"__version": 3, "noising_bias": 0.7})
    assert (uniform["timestep_distribution"], uniform["noising_weight"], uniform["noising_bias"]) == ("UNIFORM", 0, 0)


def test_versions_4_to_7_checkpointing_mode_save_every_and_layer_filter():
    migrated, _ = migrate(
        {
            "__version": 4,
            "gradient_checkpointing": False,
            "save_after": 3,
            "save_after_unit": "EPOCH",
            "lora_layers": "attentions",
            "lora_layer_preset": None,
            "lora_layers_regex": False,
        }
    )
    assert all(migrated[part]["gradient_checkpointing"] is False for part in ("unet", "text_encoder", "vae"))
    assert (migrated["save_every"], migrated["save_every_unit"]) == (3, "EPOCH")
    assert migrated["layer_filter"] == "attentions"
    assert migrated["layer_filter_preset"] == "full"
    assert migrated["layer_filter_regex"] is False
    assert "gradient_checkpointing" not in migrated


def test_version_8_prior_settings_become_the_transformer_settings_except_for_prior_models():
    migrated, _ = migrate({"__version": 8, "model_type": "PIXART_SIGMA", "prior": {"learning_rate": 0.1}})
    assert migrated["transformer"] == {"learning_rate": 0.1}
    cascade, _ = migrate({"__version": 8, "model_type": "STABLE_CASCADE_1", "prior": {"learning_rate": 0.1}})
    assert "transformer" not in cascade


def test_version_9_global_weight_dtype_fills_parts_left_at_none():
    migrated, _ = migrate(
        {
            "__version": 9,
            "weight_dtype": "BFLOAT_16",
            "unet": {"weight_dtype": "NONE"},
            "vae": {"weight_dtype": "FLOAT_32"},
        }
    )
    assert migrated["unet"]["weight_dtype"] == "BFLOAT_16"
    assert migrated["vae"]["weight_dtype"] == "FLOAT_32"
    assert "weight_dtype" not in migrated


@pytest.mark.parametrize(
    ("method", "expected"),
    [("LORA", "LEGACY_LORA"), ("FINE_TUNE", "LEGACY_SAFETENSORS"), ("EMBEDDING", "SAFETENSORS")],
)
def test_version_10_single_safetensors_format_means_the_legacy_layout(method, expected):
    migrated, _ = migrate({"__version": 10, "training_method": method, "output_model_format": "SAFETENSORS"})
    assert migrated["output_model_format"] == expected


def test_version_10_offloading_settings_spread_to_the_parts():
    migrated, _ = migrate(
        {
            "__version": 10,
            "gradient_checkpointing": "CPU_OFFLOADED",
            "layer_offload_fraction": 0.5,
            "enable_async_offloading": False,
        }
    )
    assert migrated["unet"] == {"gradient_checkpointing": True, "activation_offloading": True, "offload_fraction": 0.5}
    assert migrated["async_offloading"] is False


def test_a_current_file_with_the_old_global_keys_of_early_july_2026_still_spreads_them():
    migrated, version = migrate({"__version": 11, "gradient_checkpointing": "OFF"})
    assert version == 11
    assert migrated["unet"]["gradient_checkpointing"] is False


def test_an_old_file_missing_every_key_migrates_without_error():
    migrated, version = migrate({"__version": 0})
    assert (version, migrated["__version"]) == (0, 11)


def test_the_embeddings_list_becomes_the_embedding_and_additional_embeddings():
    migrated, _ = migrate({"__version": 5, "embeddings": [{"placeholder": "<a>"}, {"placeholder": "<b>"}]})
    assert migrated["embedding"] == {"placeholder": "<a>"}
    assert migrated["additional_embeddings"] == [{"placeholder": "<b>"}]


def test_concept_repeats_and_validation_flag_migrate():
    assert migrate_concept({"repeats": 2.0, "validation_concept": True}) == {"balancing": 2.0, "type": "VALIDATION"}
    assert migrate_concept({"__version": 2, "balancing": 1.0}) == {"__version": 2, "balancing": 1.0}


@pytest.mark.parametrize("version", ["abc", 3.5, True, -1])
def test_a_version_that_is_no_whole_number_is_a_clear_error(version: object) -> None:
    from onetrainer.util.errors import UserError

    with pytest.raises(UserError, match="is not a OneTrainer config version") as error:
        migrate({"__version": version})
    assert error.value.where == "__version"
