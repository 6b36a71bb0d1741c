"""Our run config as a OneTrainer config: what maps, and which of our settings OneTrainer cannot hold."""

import copy

import pytest

from onetrainer.util.config.loader import resolve_raw, validate
from onetrainer.util.config.onetrainer_json.exporter import export_onetrainer
from onetrainer.util.config.onetrainer_json.importer import import_onetrainer

BASE = {"model": {"type": "sd15", "base": "tiny:sd15"}, "method": "lora"}


def export(*overrides: str):
    raw, problems = resolve_raw(copy.deepcopy(BASE), list(overrides))
    return export_onetrainer(validate(raw, check_paths=False, earlier_problems=problems))


def lacking(findings) -> set[str]:
    return {item.key for item in findings}


def test_a_config_of_defaults_exports_with_nothing_left_out():
    config, findings = export()
    assert findings == []
    assert config["__version"] == 11
    assert (config["model_type"], config["training_method"]) == ("STABLE_DIFFUSION_15", "LORA")
    assert config["layer_filter_preset"] == "attn-mlp"
    assert config["output_model_format"] == "KOHYA_LORA"


def test_our_settings_without_a_place_in_onetrainer_are_listed():
    _, findings = export(
        "model.prediction_type=sample",
        "training.lr_scheduler=polynomial",
        "sampling.before_training=true",
        "data.verify_images=false",
    )
    assert lacking(findings) == {
        "model.prediction_type",
        "training.lr_scheduler",
        "sampling.before_training",
        "data.verify_images",
    }


def test_a_text_encoder_lora_on_fewer_layers_is_listed_only_when_it_trains():
    _, quiet = export("parts.text_encoder.lora_targets=attn")
    assert quiet == []
    _, findings = export("parts.text_encoder.train=true", "parts.text_encoder.lora_targets=attn")
    assert lacking(findings) == {"parts.text_encoder.lora_targets"}


def test_a_regex_with_a_comma_cannot_be_a_onetrainer_layer_filter():
    config, findings = export("lora.regex=attn[12]{1,2}")
    assert lacking(findings) == {"lora.regex"}
    assert config["layer_filter_regex"] is True


@pytest.mark.parametrize(
    ("cadence", "expected"),
    [("250 steps", (250, "STEP")), ("1.5 minutes", (90, "SECOND")), ("never", (0, "NEVER"))],
)
def test_cadences_become_whole_intervals(cadence, expected):
    config, _ = export(f"sampling.every={cadence}")
    assert (config["sample_after"], config["sample_after_unit"]) == expected


def test_input_perturbation_and_hue_export_as_onetrainer_computes_them(tmp_path):
    config, findings = export(
        "noise.input_perturbation=0.1", f"data.concepts.0.path={tmp_path}", "data.concepts.0.image.hue=0.25"
    )
    assert lacking(findings) == {"noise.input_perturbation"}, "OneTrainer's perturbs the target too"
    image = config["concepts"][0]["image"]
    assert (image["enable_random_hue"], image["random_hue_max_strength"]) == (True, 0.5), "its strength s is ±s/2"


def test_caption_dropout_is_listed_as_onetrainer_drops_each_encoders_output_instead(tmp_path):
    config, findings = export(
        f"data.concepts.0.path={tmp_path}",
        "data.concepts.0.caption.caption_dropout=0.1",
        f"data.concepts.1.path={tmp_path}",
    )
    assert lacking(findings) == {"data.concepts.0.caption.caption_dropout"}
    assert config["text_encoder"]["dropout_probability"] == 0.0


def test_an_exported_preset_of_ours_imports_back_to_the_same_settings(tmp_path):
    import json

    config, _ = export("training.optimizer=prodigy", "training.learning_rate=1.0", "lora.type=loha", "lora.rank=8")
    path = tmp_path / "exported.json"
    path.write_text(json.dumps(config), encoding="utf-8")
    imported = import_onetrainer(path)
    assert imported.unsupported == []
    assert imported.data["training"]["optimizer"] == "prodigy"
    assert imported.data["lora"]["type"] == "loha"
    assert imported.data["lora"]["rank"] == 8
    assert imported.data["parts"]["unet"]["lora_targets"] == "attn-mlp"


def test_compilation_maps_both_ways_and_the_other_speed_settings_are_only_notes(tmp_path):
    import json

    config, findings = export("training.compile=true", "training.channels_last=true", "training.read_back_lag=2")
    assert config["compile"] is True
    assert findings == []  # speed settings change no result: notes, not losses
    path = tmp_path / "exported.json"
    path.write_text(json.dumps(config), encoding="utf-8")
    imported = import_onetrainer(path)
    assert imported.unsupported == []
    assert imported.data["training"]["compile"] is True


@pytest.mark.parametrize(
    ("family", "fmt", "output_axis"),
    [("sd15", "kohya", False), ("sd15", "peft", True), ("sd15", "auto", False), ("sd35-medium", "auto", True)],
)
def test_dora_exports_the_axis_its_output_format_trains(family, fmt, output_axis):
    """`auto` is the family's LoRA layout (SD 3.x: peft, which trains a DoRA per output row)."""
    model = (f"model.type={family}", f"model.base=tiny:{family}", "model.options.t5_max_length=77")
    config, findings = export(*(model if family != "sd15" else ()), "lora.type=dora", f"saving.format={fmt}")
    assert findings == []
    assert (config["lora_decompose"], config["lora_decompose_output_axis"]) == (True, output_axis)


def test_memory_settings_export_to_the_parts_and_optimizer_flags():
    config, findings = export(
        "parts.unet.weight_dtype=fp8",
        "parts.text_encoder.weight_dtype=nf4",
        "training.precision=bf16",
        "training.fused_backward=true",
        "training.max_grad_norm=null",
        "training.gradient_checkpointing=true",
        "training.activation_offload=true",
    )
    assert findings == []
    assert (config["unet"]["weight_dtype"], config["text_encoder"]["weight_dtype"]) == ("FLOAT_8", "NFLOAT_4")
    assert config["unet"]["activation_offloading"] is True
    optimizer = config["optimizer"]
    assert (optimizer["fused_back_pass"], optimizer["stochastic_rounding"]) == (True, False)
    assert (optimizer["fused"], optimizer["foreach"]) == (False, False), "OneTrainer's ADAMW needs both off"
    assert config["optimizer_defaults"]["ADAMW"] == optimizer


def test_memory_settings_onetrainer_cannot_hold_are_listed():
    _, findings = export(
        "training.optimizer=sgd",
        "training.precision=bf16",
        "training.fused_backward=true",
        "training.max_grad_norm=null",
        "training.optimizer_offload=true",
        "training.gradient_checkpointing=true",
        "parts.unet.offload_blocks=0.5",
    )
    assert lacking(findings) == {"training.fused_backward", "training.optimizer_offload", "parts.unet.offload_blocks"}
    config, findings = export("training.optimizer=adamw8bit_ao")
    assert lacking(findings) == {"training.optimizer"}
    assert config["optimizer"]["optimizer"] == "ADAMW_8BIT"


def test_flux_offloading_and_options_export_and_a_block_count_is_listed():
    flux = ("model.type=flux-dev", "model.base=tiny:flux-dev", "training.gradient_checkpointing=true")
    config, findings = export(
        *flux, "parts.transformer.offload_blocks=0.25", "model.options.guidance=3.5", "model.options.true_cfg=2"
    )
    assert config["model_type"] == "FLUX_DEV_1"
    assert config["transformer"]["offload_fraction"] == 0.25
    assert config["transformer"]["guidance_scale"] == 3.5
    assert config["text_encoder_2_sequence_length"] == 512
    assert lacking(findings) == {"model.options.true_cfg"}
    _, counted = export(*flux, "parts.transformer.offload_blocks=12")
    assert lacking(counted) == {"parts.transformer.offload_blocks"}


def test_sd3_without_t5_exports_its_text_encoder_left_out():
    sd35 = ("model.type=sd35-medium", "model.base=tiny:sd35-medium", "model.options.t5_max_length=77")
    config, findings = export(*sd35, "model.options.t5=false")
    assert findings == []
    assert config["model_type"] == "STABLE_DIFFUSION_35"
    assert config["text_encoder_3"]["include"] is False
    _, longer = export(*sd35[:2])
    assert lacking(longer) == {"model.options.t5_max_length"}, "OneTrainer tokenizes T5 to 77 tokens"


@pytest.mark.parametrize(("family", "shift", "dynamic"), [("sd35-medium", 3.0, False), ("flux-dev", 3.0, True)])
def test_a_flow_models_own_timestep_shift_is_exported(family, shift, dynamic):
    """`noise.shift: null` trains with the model's scheduler's shift; OneTrainer's default would be none."""
    config, _ = export(f"model.type={family}", f"model.base=tiny:{family}")
    assert (config["timestep_shift"], config["dynamic_timestep_shifting"]) == (shift, dynamic)
    config, _ = export(
        f"model.type={family}", f"model.base=tiny:{family}", "noise.shift=1.5", "noise.dynamic_shift=false"
    )
    assert (config["timestep_shift"], config["dynamic_timestep_shifting"]) == (1.5, False)


def test_an_infinite_growth_rate_is_written_as_onetrainer_writes_it():
    import json

    config, _ = export("training.optimizer=prodigy", "training.learning_rate=1.0")
    assert config["optimizer"]["growth_rate"] == "inf"
    assert config["optimizer_defaults"]["PRODIGY"]["growth_rate"] == "inf"
    json.dumps(config, allow_nan=False)  # strict JSON: no Infinity anywhere


def test_ema_previews_export_without_onetrainers_extra_non_ema_ones():
    config, findings = export("training.ema.enabled=true")
    assert (config["ema"], config["non_ema_sampling"], findings) == ("GPU", False, [])
    assert export()[0]["non_ema_sampling"] is True, "OneTrainer's default where EMA is off"


def test_masked_training_exports_without_onetrainers_unmasked_samples():
    config, findings = export("loss.masked.enabled=true")
    assert (config["masked_training"], config["unmasked_probability"], findings) == (True, 0.0, [])


def test_optimizer_arguments_the_config_leaves_out_are_exported_as_our_optimizer_uses_them():
    prodigy = ("training.optimizer=prodigy", "training.learning_rate=1.0")
    config, _ = export(*prodigy)
    assert config["optimizer"]["slice_p"] == 1, "prodigyopt's default; OneTrainer's own would be 11"
    set_here, _ = export(*prodigy, "training.optimizer_args.slice_p=11")
    assert set_here["optimizer"]["slice_p"] == 11


def test_a_flow_matching_preview_with_another_sampler_than_euler_is_listed():
    flux = ("model.type=flux-dev", "model.base=tiny:flux-dev", "sampling.prompts.0.prompt=a red circle")
    config, findings = export(*flux)
    assert (config["samples"][0]["noise_scheduler"], findings) == ("EULER", [])
    _, other = export(*flux, "sampling.prompts.0.scheduler=unipc")
    assert lacking(other) == {"sampling.prompts.0.scheduler"}


def test_previews_before_training_are_onetrainers_and_without_them_it_skips_the_first_interval():
    with_first, findings = export("sampling.every=250 steps", "sampling.before_training=true")
    assert (with_first["sample_after"], with_first["sample_skip_first"], findings) == (250, 0, [])
    without, findings = export("sampling.every=250 steps")
    assert (without["sample_after"], without["sample_skip_first"], findings) == (250, 250, [])


def test_step_counts_are_exported_as_onetrainers_batches():
    config, findings = export(
        "training.gradient_accumulation_steps=4",
        "saving.every=25 steps",
        "sampling.every=2 steps",
        "saving.backup_every=1 epoch",
        "parts.text_encoder.train=true",
        "parts.text_encoder.lora_targets=full",
        "parts.text_encoder.stop_after=10 steps",
        "training.warmup=50",
    )
    assert findings == []
    assert (config["save_every"], config["save_every_unit"]) == (100, "STEP")
    assert (config["sample_after"], config["sample_skip_first"]) == (8, 8)
    assert (config["backup_after"], config["backup_after_unit"]) == (1, "EPOCH")
    assert config["text_encoder"]["stop_training_after"] == 40
    assert config["learning_rate_warmup_steps"] == 200.0


def test_a_schedule_free_warm_up_is_not_counted_in_batches_and_one_step_is_not_the_whole_run():
    """OneTrainer passes a schedule-free optimizer its warm-up as it is, and reads a warm-up of 1 as a fraction."""
    config, findings = export(
        "training.gradient_accumulation_steps=4", "training.optimizer=schedulefree_adamw", "training.warmup=50"
    )
    assert (config["learning_rate_warmup_steps"], findings) == (50.0, [])
    config, findings = export("training.warmup=1")
    assert config["learning_rate_warmup_steps"] == 2.0
    assert lacking(findings) == {"training.warmup"}


def test_a_schedule_free_warm_up_of_one_step_exports_as_it_is_and_a_fraction_is_listed():
    """OneTrainer's schedule-free optimizer takes 1 as one step, as ours, and 0.1 as 0.1 of a step (no warm-up)."""
    schedule_free = "training.optimizer=schedulefree_adamw"
    config, findings = export(schedule_free, "training.warmup=1")
    assert (config["learning_rate_warmup_steps"], findings) == (1.0, [])
    config, findings = export(schedule_free, "training.warmup=0.1")
    assert config["learning_rate_warmup_steps"] == 0.1
    assert lacking(findings) == {"training.warmup"}


def test_a_text_encoders_own_dropout_is_onetrainers_dropout_probability(tmp_path):
    config, findings = export("parts.text_encoder.dropout=0.3")
    assert (config["text_encoder"]["dropout_probability"], findings) == (0.3, [])
    _, both = export(
        "parts.text_encoder.dropout=0.3",
        f"data.concepts.0.path={tmp_path}",
        "data.concepts.0.caption.caption_dropout=0.1",
    )
    assert lacking(both) == {"data.concepts.0.caption.caption_dropout"}


def test_the_layer_filter_holds_what_trains_which_onetrainers_training_reads_alone():
    config, findings = export()
    assert (config["layer_filter_preset"], config["layer_filter"], config["layer_filter_regex"]) == (
        "attn-mlp",
        "attentions",
        False,
    )
    assert findings == []
    full, findings = export("lora.targets=full")  # OneTrainer's full (an empty filter) adapts more layers
    assert (full["layer_filter_preset"], full["layer_filter_regex"], findings) == ("custom", True, [])
    assert full["layer_filter"].startswith("(?:(?<![^.])attn[12]")
    flux = ("model.type=flux-dev", "model.base=tiny:flux-dev")
    blocks, _ = export(*flux, "lora.targets=full")
    assert (blocks["layer_filter_preset"], blocks["layer_filter"]) == ("blocks", "transformer_block")
    attn_mlp, _ = export(*flux, "lora.targets=attn-mlp")  # OneTrainer's own attn-mlp adapts fewer layers
    assert (attn_mlp["layer_filter_preset"], attn_mlp["layer_filter_regex"]) == ("custom", True)
