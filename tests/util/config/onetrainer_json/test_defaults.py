"""Reading a OneTrainer file over its defaults, as OneTrainer does, but reporting what it would skip."""

import math

from onetrainer.util.config.onetrainer_json.defaults import (
    optimizer_defaults,
    overlay,
    part_names,
    train_defaults,
)
from onetrainer.util.config.onetrainer_json.findings import Ledger
from onetrainer.util.config.onetrainer_json.import_training import resolve_optimizer


def test_the_defaults_hold_every_top_level_setting_and_all_thirteen_parts():
    defaults = train_defaults()
    assert len(part_names()) == 13
    assert len(set(defaults) - {"__version", "concepts", "samples"}) == 158
    assert defaults["__version"] == 11
    assert defaults["text_encoder"]["stop_training_after"] == 30
    assert defaults["text_encoder"]["stop_training_after_unit"] == "EPOCH"
    assert defaults["unconditional_transformer"]["train"] is False
    assert len(set(defaults["optimizer"]) - {"__version", "optimizer"}) == 103


def test_values_are_coerced_like_onetrainer_and_missing_keys_keep_defaults():
    ledger = Ledger()
    config = overlay({"epochs": "10", "learning_rate": "1e-4", "unet": {"learning_rate": 2}}, ledger)
    assert config["epochs"] == 10
    assert config["learning_rate"] == 1e-4
    assert config["unet"]["learning_rate"] == 2.0
    assert config["batch_size"] == 1
    assert (ledger.unsupported, ledger.notes) == ([], [])


def test_unknown_keys_are_noted_and_unreadable_values_refused():
    ledger = Ledger()
    config = overlay({"align_prop": True, "output_model_format": "CKPT", "unet": {"train": "yes"}}, ledger)
    assert [note.key for note in ledger.notes] == ["align_prop"]
    assert {item.key for item in ledger.unsupported} == {"output_model_format", "unet.train"}
    assert config["output_model_format"] == "SAFETENSORS"
    assert config["unet"]["train"] is True


def test_an_optimizer_field_comes_from_the_file_then_the_remembered_defaults_then_the_built_in():
    ledger = Ledger()
    raw = {
        "optimizer": {"optimizer": "PRODIGY", "d_coef": None, "weight_decay": 0.1},
        "optimizer_defaults": {"PRODIGY": {"d_coef": 2.0, "weight_decay": 0.5}},
    }
    optimizer = resolve_optimizer(raw, ledger)
    assert optimizer["weight_decay"] == 0.1
    assert optimizer["d_coef"] == 2.0
    assert optimizer["d0"] == 1e-6
    assert math.isinf(optimizer["growth_rate"])


def test_a_preset_that_sets_only_the_optimizer_name_gets_its_settings_from_optimizer_defaults():
    optimizer = resolve_optimizer(
        {"optimizer": {"optimizer": "ADAFACTOR"}, "optimizer_defaults": {"ADAFACTOR": {"fused_back_pass": True}}},
        Ledger(),
    )
    assert optimizer["fused_back_pass"] is True
    assert optimizer_defaults("ADAFACTOR")["stochastic_rounding"] is True


def test_a_number_in_a_text_field_is_read_as_text_as_onetrainer_does():
    ledger = Ledger()
    config = overlay({"resolution": 1024, "frames": 25, "unet": {"model_name": 7}, "ema": 1}, ledger)
    assert (config["resolution"], config["frames"], config["unet"]["model_name"]) == ("1024", "25", "7")
    assert [item.key for item in ledger.unsupported] == ["ema"], "an enum field still takes its member names only"
    assert config["ema"] == "OFF"
