"""How single OneTrainer settings map to ours, and which ones are refused or noted, and why."""

import functools
import json
import re

import pytest

from onetrainer.util.config.onetrainer_json.importer import Imported, import_onetrainer
from onetrainer.util.config.onetrainer_json.target import Target
from onetrainer.util.errors import UserError

BASE = {"__version": 11, "model_type": "STABLE_DIFFUSION_15", "training_method": "LORA", "base_model_name": "org/m"}


@pytest.fixture
def convert(tmp_path):
    def run(**settings) -> Imported:
        path = tmp_path / "config.json"
        path.write_text(json.dumps({**BASE, "concepts": [], "samples": [], **settings}), encoding="utf-8")
        return import_onetrainer(path)

    return run


def get(imported: Imported, dotted: str):
    target = Target()
    target.data = imported.data
    return target.get(dotted)


def unsupported(imported: Imported) -> dict[str, str]:
    return {item.key: item.why for item in imported.unsupported}


def notes(imported: Imported) -> dict[str, str]:
    return {item.key: item.why for item in imported.notes}


def test_a_setting_at_its_default_is_never_reported(convert):
    imported = convert(compile=False, learning_rate_scaler="NONE", unet={"offload_fraction": 0.0})
    assert imported.unsupported == []


def test_every_sd2_model_type_maps_to_the_sd2_family(convert):
    for name in ("STABLE_DIFFUSION_20", "STABLE_DIFFUSION_20_BASE", "STABLE_DIFFUSION_21", "STABLE_DIFFUSION_21_BASE"):
        assert get(convert(model_type=name), "model.type") == "sd2"


def test_the_sdxl_model_type_maps_to_the_sdxl_family(convert):
    assert get(convert(model_type="STABLE_DIFFUSION_XL_10_BASE"), "model.type") == "sdxl"


@pytest.mark.parametrize("model_type", ["STABLE_DIFFUSION_15_INPAINTING", "ZETA_IMAGE_1", "NOPE"])
def test_model_types_without_a_family_here_are_a_user_error(convert, model_type):
    with pytest.raises(UserError, match="not supported in this version"):
        convert(model_type=model_type)


def test_vae_training_is_a_user_error(convert):
    with pytest.raises(UserError, match="FINE_TUNE_VAE"):
        convert(training_method="FINE_TUNE_VAE")


def test_forced_prediction_and_zero_terminal_snr(convert):
    assert get(convert(force_epsilon_prediction=True), "model.prediction_type") == "epsilon"
    zero_snr = convert(rescale_noise_scheduler_to_zero_terminal_snr=True)
    assert get(zero_snr, "model.prediction_type") == "v_prediction"
    assert get(zero_snr, "noise.zero_terminal_snr") is True


def test_a_vae_override_becomes_model_vae_and_other_part_sources_are_refused(convert):
    imported = convert(vae={"model_name": "org/vae"}, unet={"model_name": "unet.safetensors"})
    assert get(imported, "model.vae") == "org/vae"
    assert "unet.model_name" in unsupported(imported)


def test_stop_points_and_a_zero_stop_that_means_never_trains(convert):
    imported = convert(
        unet={"stop_training_after": 500, "stop_training_after_unit": "STEP"},
        text_encoder={"train": True, "stop_training_after": 0, "stop_training_after_unit": "EPOCH"},
    )
    assert get(imported, "parts.unet.stop_after") == "500 steps"
    assert get(imported, "parts.text_encoder.train") is False
    minutes = convert(unet={"stop_training_after": 5, "stop_training_after_unit": "MINUTE"})
    assert "unet.stop_training_after_unit" in unsupported(minutes)


def test_full_fine_tune_keeps_trained_weights_in_fp32_and_refuses_a_layer_filter(convert):
    imported = convert(training_method="FINE_TUNE", unet={"weight_dtype": "BFLOAT_16"}, layer_filter="attn")
    assert get(imported, "parts.unet.weight_dtype") == "fp32"
    assert set(unsupported(imported)) == {"unet.weight_dtype", "layer_filter"}


@pytest.mark.parametrize(("onetrainer", "ours"), [("FLOAT_8", "fp8"), ("INT_8", "int8"), ("NFLOAT_4", "nf4")])
def test_quantised_weight_dtypes_of_frozen_parts_map_to_ours(convert, onetrainer, ours):
    imported = convert(text_encoder={"weight_dtype": onetrainer, "train": False}, unet={"weight_dtype": onetrainer})
    assert get(imported, "parts.text_encoder.weight_dtype") == ours
    assert get(imported, "parts.unet.weight_dtype") == ours
    assert imported.unsupported == []


def test_weight_dtypes_we_cannot_honour_are_refused_with_the_nearest_we_can(convert):
    imported = convert(vae={"weight_dtype": "NFLOAT_4"}, unet={"weight_dtype": "INT_W8A8"})
    assert get(imported, "parts.vae.weight_dtype") == "fp32"
    assert get(imported, "parts.unet.weight_dtype") == "int8"
    reasons = unsupported(imported)
    assert "the VAE is convolutions" in reasons["vae.weight_dtype"]
    assert "activations are not quantised" in reasons["unet.weight_dtype"]
    loha = convert(peft_type="LOHA", unet={"weight_dtype": "NFLOAT_4"})
    assert get(loha, "parts.unet.weight_dtype") == "int8"
    assert "LyCORIS" in unsupported(loha)["unet.weight_dtype"]


def test_a_fully_trained_part_keeps_bf16_weights_only_with_stochastic_rounding(convert):
    convert = functools.partial(convert, train_dtype="BFLOAT_16")
    rounded = {"optimizer": "ADAFACTOR"}  # its built-in default rounds stochastically
    imported = convert(training_method="FINE_TUNE", unet={"weight_dtype": "BFLOAT_16"}, optimizer=rounded)
    assert get(imported, "parts.unet.weight_dtype") == "bf16"
    assert get(imported, "training.stochastic_rounding") is True
    assert imported.unsupported == []
    plain = convert(training_method="FINE_TUNE", unet={"weight_dtype": "BFLOAT_16"})  # ADAMW: no rounding
    assert get(plain, "parts.unet.weight_dtype") == "fp32"
    assert "stochastic_rounding is off" in unsupported(plain)["unet.weight_dtype"]
    prodigy = {"optimizer": "PRODIGY", "stochastic_rounding": True}
    other = convert(training_method="FINE_TUNE", unet={"weight_dtype": "BFLOAT_16"}, optimizer=prodigy)
    assert "the prodigy optimizer cannot" in unsupported(other)["unet.weight_dtype"]
    quantised = convert(training_method="FINE_TUNE", unet={"weight_dtype": "FLOAT_8"})
    assert get(quantised, "parts.unet.weight_dtype") == "fp32"
    assert "frozen, weight-only" in unsupported(quantised)["unet.weight_dtype"]


def test_stochastic_rounding_without_bf16_trained_weights_is_a_note(convert):
    imported = convert(optimizer={"optimizer": "ADAMW", "stochastic_rounding": True}, train_dtype="BFLOAT_16")
    assert get(imported, "training.stochastic_rounding") is None
    assert imported.unsupported == []
    assert "none train here" in notes(imported)["optimizer.stochastic_rounding"]


def test_the_fused_back_pass_maps_and_drops_clipping_by_the_total_norm(convert):
    half = convert(optimizer={"optimizer": "ADAMW", "fused_back_pass": True})  # OneTrainer's default: FLOAT_16
    assert "FLOAT_16" in unsupported(half)["optimizer.fused_back_pass"]
    convert = functools.partial(convert, train_dtype="BFLOAT_16")
    imported = convert(optimizer={"optimizer": "ADAMW", "fused_back_pass": True, "fused": False})
    assert get(imported, "training.fused_backward") is True
    assert get(imported, "training.max_grad_norm") is None
    assert set(unsupported(imported)) == {"clip_grad_norm"}
    assert "optimizer.fused" in notes(imported)
    unclipped = convert(optimizer={"optimizer": "ADAMW", "fused_back_pass": True}, clip_grad_norm=None)
    assert unclipped.unsupported == []
    accumulated = convert(optimizer={"optimizer": "ADAMW", "fused_back_pass": True}, gradient_accumulation_steps=4)
    assert get(accumulated, "training.fused_backward") is None
    assert "accumulate over 4 batches" in unsupported(accumulated)["optimizer.fused_back_pass"]
    lion = convert(optimizer={"optimizer": "LION", "fused_back_pass": True}, clip_grad_norm=None)
    assert "one tensor at a time" in unsupported(lion)["optimizer.fused_back_pass"]


def test_layer_and_activation_offloading_of_the_denoiser(convert):
    transformer = {"weight_dtype": "FLOAT_8", "offload_fraction": 0.5, "activation_offloading": True}
    flux = {"model_type": "FLUX_DEV_1", "base_model_name": "tiny:flux-dev"}
    imported = convert(**flux, transformer=transformer, text_encoder_2={"offload_fraction": 0.5})
    assert get(imported, "parts.transformer.offload_blocks") == 0.5
    assert get(imported, "training.activation_offload") is True
    assert imported.unsupported == []
    assert "only the denoiser's blocks" in notes(imported)["text_encoder_2.offload_fraction"]
    whole = convert(**flux, transformer={"offload_fraction": 1})
    assert get(whole, "parts.transformer.offload_blocks") == 1.0
    assert isinstance(get(whole, "parts.transformer.offload_blocks"), float), "a fraction, not one block"
    unchecked = {"offload_fraction": 0.5, "activation_offloading": True, "gradient_checkpointing": False}
    refused = convert(**flux, transformer=unchecked)
    assert get(refused, "parts.transformer.offload_blocks") is None
    assert get(refused, "training.activation_offload") is None
    assert {"transformer.offload_fraction", "transformer.activation_offloading"} <= set(unsupported(refused))
    nf4 = convert(**flux, transformer={"weight_dtype": "NFLOAT_4", "offload_fraction": 0.5})
    assert get(nf4, "parts.transformer.weight_dtype") == "nf4"
    assert "does not take nf4" in unsupported(nf4)["transformer.offload_fraction"]
    unet = convert(unet={"offload_fraction": 0.5})
    assert get(unet, "parts.unet.offload_blocks") is None
    assert "not of a UNet" in notes(unet)["unet.offload_fraction"]


def test_flux_and_sd35_model_types_and_their_options(convert):
    dev = convert(
        model_type="FLUX_DEV_1",
        base_model_name="black-forest-labs/FLUX.1-dev",
        transformer={"guidance_scale": 3.5},
        text_encoder_2_sequence_length=256,
    )
    assert get(dev, "model.type") == "flux-dev"
    assert get(dev, "model.options") == {"guidance": 3.5, "t5_max_length": 256}
    assert dev.notes == [] or "model_type" not in notes(dev)
    schnell = convert(model_type="FLUX_DEV_1", base_model_name="tiny:flux-schnell", transformer={"guidance_scale": 3.5})
    assert get(schnell, "model.type") == "flux-schnell"
    assert "takes no guidance input" in notes(schnell)["transformer.guidance_scale"]
    assert get(schnell, "model.options") == {"t5_max_length": 77}, "OneTrainer's FLUX.1 default T5 length"
    unknown = convert(model_type="FLUX_DEV_1", base_model_name="/nowhere/flux")
    assert get(unknown, "model.type") == "flux-dev"
    assert "model.type=flux-schnell" in notes(unknown)["model_type"]
    medium = convert(model_type="STABLE_DIFFUSION_35", base_model_name="stabilityai/stable-diffusion-3.5-medium")
    assert get(medium, "model.type") == "sd35-medium"
    without_t5 = convert(model_type="STABLE_DIFFUSION_3", base_model_name="x", text_encoder_3={"include": False})
    assert (get(without_t5, "model.type"), get(without_t5, "model.options")) == (
        "sd3-medium",
        {"t5": False, "t5_max_length": 77},
    ), "OneTrainer tokenizes SD 3's T5 to CLIP's 77 tokens"
    assert get(without_t5, "parts.text_encoder_3.train") is False, "a part left out trains in no way"
    assert without_t5.unsupported == []
    assert "text_encoder_2.include" in unsupported(
        convert(model_type="STABLE_DIFFUSION_3", text_encoder_2={"include": False})
    )


@pytest.mark.parametrize(
    ("peft", "settings", "kind", "rank"),
    [
        ("LORA", {"lora_decompose": True}, "dora", 16),
        ("LOHA", {"lora_rank": 8}, "loha", 8),
        ("LOKR", {"lora_rank": 8, "lokr_dim": 4}, "lokr", 4),
    ],
)
def test_adapter_types(convert, peft, settings, kind, rank):
    imported = convert(peft_type=peft, **settings)
    assert (get(imported, "lora.type"), get(imported, "lora.rank")) == (kind, rank)
    assert imported.unsupported == []


@pytest.mark.parametrize(
    ("output_format", "output_axis", "refused"),
    [
        ("KOHYA_LORA", False, False),
        ("KOHYA_LORA", True, True),
        ("DIFFUSERS_LORA", True, False),
        ("DIFFUSERS_LORA", False, True),
    ],
)
def test_dora_axis_imports_when_the_output_format_trains_it(convert, output_format, output_axis, refused):
    imported = convert(
        peft_type="LORA", lora_decompose=True, lora_decompose_output_axis=output_axis, output_model_format=output_format
    )
    assert get(imported, "lora.type") == "dora"
    assert ("lora_decompose_output_axis" in unsupported(imported)) is refused


def test_oft_is_refused_and_its_settings_noted_only_when_unused(convert):
    assert "peft_type" in unsupported(convert(peft_type="OFT_2"))
    assert "oft_block_size" in notes(convert(oft_block_size=8))


def test_a_custom_substring_filter_becomes_a_regex_on_the_denoiser_only(convert):
    imported = convert(layer_filter_preset="custom", layer_filter="down_blocks.1, mid_block")
    regex = re.compile(get(imported, "parts.unet.lora_regex"))
    assert regex.search("down_blocks.1.attentions.0.proj_in")
    assert regex.search("mid_block.resnets.0.conv1")
    assert not regex.search("mid_block.resnets.0.norm1"), "OneTrainer adapts linear and conv layers only"
    assert not regex.search("up_blocks.1.resnets.0.conv1")
    assert get(imported, "lora.targets") == "full"
    assert get(imported, "parts.text_encoder.lora_regex") is None


def test_a_named_preset_without_an_equivalent_and_no_filter_is_refused(convert):
    assert "layer_filter_preset" in unsupported(convert(layer_filter_preset="blocks"))


def test_embedding_training_and_additional_embeddings(convert):
    imported = convert(
        training_method="EMBEDDING",
        embedding={"placeholder": "<cat>", "token_count": 3, "initial_embedding_text": "cat"},
        embedding_learning_rate=0.005,
        additional_embeddings=[{"placeholder": "<style>", "train": False, "model_name": "style.pt"}],
    )
    assert get(imported, "embedding.placeholder") == "<cat>"
    assert get(imported, "embedding.vectors") == 3
    assert get(imported, "embedding.learning_rate") == 0.005
    assert get(imported, "embedding.additional") == [
        {"placeholder": "<style>", "init_text": "*", "vectors": 1, "init_from": "style.pt", "train": False}
    ]
    assert get(imported, "parts.unet") == {"weight_dtype": "fp32"}
    assert "embedding.is_output_embedding" in unsupported(
        convert(embedding={"is_output_embedding": True}, training_method="EMBEDDING")
    )


def test_resolutions(convert):
    assert get(convert(resolution="512,768"), "data.resolution") == [512, 768]
    number = convert(resolution=1024)
    assert (get(number, "data.resolution"), number.unsupported) == (1024, [])
    fixed = convert(resolution="768x512")
    assert get(fixed, "data.resolution") == 624
    assert "resolution" in unsupported(fixed)


def test_concept_balancing_flip_and_fixed_augmentations(convert, tmp_path):
    concept = {
        "path": str(tmp_path),
        "balancing": 40,
        "balancing_strategy": "SAMPLES",
        "image": {"enable_fixed_flip": True, "enable_fixed_hue": True, "random_hue_max_strength": 0.2},
        "text": {"prompt_source": "concept", "prompt_path": "captions.txt", "caps_randomize_enable": True},
    }
    imported = convert(concepts=[concept])
    (mapped,) = get(imported, "data.concepts")
    assert mapped["samples"] == 40
    assert mapped["image"]["flip"] == 1.0
    assert mapped["caption"]["source"] == "concept_file"
    assert mapped["caption"]["concept_file"] == "captions.txt"
    assert set(unsupported(imported)) == {"concepts.0.image.enable_fixed_hue"}
    assert "concepts.0.text.caps_randomize_mode" in notes(imported)


def test_tag_dropout_modes(convert, tmp_path):
    def concept(**text):
        return {"path": str(tmp_path), "text": {"tag_dropout_enable": True, "tag_dropout_probability": 0.2, **text}}

    full = convert(concepts=[concept()])
    assert "concepts.0.text.tag_dropout_mode" in unsupported(full)
    only = convert(
        concepts=[
            concept(
                tag_dropout_mode="RANDOM", tag_dropout_special_tags_mode="BLACKLIST", tag_dropout_special_tags="a, b"
            )
        ]
    )
    assert only.unsupported == []
    assert get(only, "data.concepts")[0]["caption"]["tag_dropout_only"] == ["a", "b"]
    semicolons = convert(
        concepts=[
            concept(
                tag_dropout_mode="RANDOM",
                tag_delimiter=";",
                tag_dropout_special_tags_mode="WHITELIST",
                tag_dropout_special_tags="a;b c",
            )
        ]
    )
    assert get(semicolons, "data.concepts")[0]["caption"]["tag_dropout_keep"] == ["a", "b c"]


def test_hue_perturbation_and_buckets_as_onetrainer_computes_them(convert, tmp_path):
    """Its hue strength s shifts by up to s/2 turns; its perturbation enlarges the target's noise too; it sizes
    FLUX.1's aspect buckets in 64 px steps."""
    image = {"enable_random_hue": True, "random_hue_max_strength": 1.0}
    imported = convert(concepts=[{"path": str(tmp_path), "image": image}], perturbation_noise_weight=0.1)
    assert get(imported, "data.concepts")[0]["image"]["hue"] == 0.5
    assert "perturbs the input only" in unsupported(imported)["perturbation_noise_weight"]
    flux = convert(model_type="FLUX_DEV_1", base_model_name="tiny:flux-dev")
    assert "steps of 64 px, ours in 16 px" in notes(flux)["aspect_ratio_bucketing"]
    assert "aspect_ratio_bucketing" not in notes(convert())
    masked = convert(masked_training=True, unmasked_weight=0.1)
    assert "max(mask, w) in OneTrainer" in notes(masked)["unmasked_weight"]
    assert "unmasked_weight" not in notes(convert(masked_training=True, unmasked_weight=0.0))


def test_a_text_encoders_dropout_is_its_own(convert, tmp_path):
    """OneTrainer zeroes each encoder's output on its own, as `parts.<encoder>.dropout` does in every family."""
    concepts = [{"path": str(tmp_path)}] * 2
    imported = convert(text_encoder={"dropout_probability": 0.2}, concepts=concepts)
    assert get(imported, "parts.text_encoder.dropout") == 0.2
    assert ["caption_dropout" in c["caption"] for c in get(imported, "data.concepts")] == [False, False]
    sd3 = convert(
        model_type="STABLE_DIFFUSION_35",
        base_model_name="tiny:sd35-medium",
        text_encoder_3={"dropout_probability": 0.4},
    )
    assert get(sd3, "parts.text_encoder_3.dropout") == 0.4
    assert get(sd3, "parts.text_encoder.dropout") is None
    assert (sd3.unsupported, "text_encoder_3.dropout_probability" in notes(sd3)) == ([], False)
    flux = convert(
        model_type="FLUX_DEV_1", base_model_name="tiny:flux-dev", text_encoder_2={"dropout_probability": 0.1}
    )
    assert get(flux, "parts.text_encoder_2.dropout") == 0.1, "FLUX.1's T5 sequence drops apart from CLIP's pooled"
    assert flux.unsupported == []
    sdxl = convert(
        model_type="STABLE_DIFFUSION_XL_10_BASE",
        base_model_name="org/m",
        text_encoder={"dropout_probability": 0.2},
        text_encoder_2={"dropout_probability": 0.3},
    )
    assert (get(sdxl, "parts.text_encoder.dropout"), get(sdxl, "parts.text_encoder_2.dropout")) == (0.2, 0.3)
    assert (sdxl.unsupported, "text_encoder.dropout_probability" in notes(sdxl)) == ([], False)


@pytest.mark.parametrize(
    ("count", "unit", "expected"),
    [(0, "EPOCH", "never"), (90, "SECOND", "1.5 minutes"), (2, "HOUR", "120 minutes"), (1, "ALWAYS", "1 step")],
)
def test_cadences(convert, count, unit, expected):
    assert get(convert(sample_after=count, sample_after_unit=unit), "sampling.every") == expected


def test_optimizer_settings(convert):
    adafactor = convert(optimizer={"optimizer": "ADAFACTOR", "eps2": 0.01, "scale_parameter": True})
    assert get(adafactor, "training.optimizer") == "adafactor"
    assert get(adafactor, "training.optimizer_args") == {"eps": [1e-30, 0.01], "scale_parameter": True}
    assert get(adafactor, "training.weight_decay") == 0.0
    prodigy = convert(optimizer={"optimizer": "PRODIGY", "d_coef": 0.5}, learning_rate=1.0)
    assert get(prodigy, "training.optimizer_args") == {"d_coef": 0.5, "slice_p": 11}, "prodigyopt's slice_p is 1"
    assert "optimizer.optimizer" in unsupported(convert(optimizer={"optimizer": "ADAMW_ADV"}))
    stray = convert(optimizer={"optimizer": "ADAMW", "d0": 0.1})
    assert unsupported(stray)["optimizer.d0"] == "not a setting of the adamw optimizer here"


@pytest.mark.parametrize("key", ["relative_step", "warmup_init"])
def test_adafactors_own_learning_rate_is_unsupported(convert, key):
    """Adafactor refuses the learning rate our trainer always gives it beside these: the run could not start."""
    imported = convert(optimizer={"optimizer": "ADAFACTOR", key: True}, learning_rate_scheduler="ADAFACTOR")
    assert "Adafactor refuses beside it" in unsupported(imported)[f"optimizer.{key}"]
    assert get(imported, "training.optimizer_args") is None


def test_loss_mixes_and_weightings(convert):
    assert get(convert(mse_strength=0.0, huber_strength=1.0, huber_delta=0.5), "loss.type") == "huber"
    mixed = convert(mae_strength=0.5)
    assert set(unsupported(mixed)) == {"mse_strength", "mae_strength"}
    assert "loss_weight_fn" in unsupported(convert(loss_weight_fn="P2"))
    assert get(convert(loss_weight_fn="DEBIASED_ESTIMATION"), "loss.weighting") == "debiased"


def test_settings_of_switched_off_features_are_notes_not_refusals(convert):
    imported = convert(noising_weight=3.0, ema_decay=0.9, tensorboard_port=7000, device_indexes="0,1")
    assert imported.unsupported == []
    assert {"noising_weight", "ema_decay", "tensorboard_port", "device_indexes"} <= set(notes(imported))


def test_concept_and_sample_files_are_found_beside_the_config(tmp_path, monkeypatch):
    (tmp_path / "c.json").write_text(json.dumps([{"path": "images", "repeats": 2}]), encoding="utf-8")
    (tmp_path / "config.json").write_text(json.dumps({**BASE, "concept_file_name": "c.json"}), encoding="utf-8")
    monkeypatch.chdir(tmp_path.parent)
    imported = import_onetrainer(tmp_path / "config.json")
    assert imported.concepts_from == str(tmp_path / "c.json")
    assert get(imported, "data.concepts")[0]["repeats"] == 2.0
    assert imported.samples_from == "none"
    assert "sample_definition_file_name" in notes(imported)


def test_a_onetrainer_config_is_told_from_a_run_config_by_its_keys(tmp_path):
    from onetrainer.util.config.onetrainer_json.files import is_onetrainer_config

    cases = {
        "ot.json": json.dumps({**BASE, "embedding": {"placeholder": "<x>"}}),
        "ours.json": json.dumps({"model": {"type": "sd15"}}),
        "ot-without-suffix.cfg": json.dumps(BASE),
        "ours.yaml": "model:\n  type: sd15\n",
        "broken.json": "{oops",
    }
    found = {}
    for name, text in cases.items():
        (tmp_path / name).write_text(text, encoding="utf-8")
        found[name] = is_onetrainer_config(tmp_path / name)
    assert found == {
        "ot.json": True,
        "ours.json": False,
        "ot-without-suffix.cfg": True,
        "ours.yaml": False,
        "broken.json": True,
    }


def test_schedule_free_optimizers_run_with_a_constant_schedule(convert):
    imported = convert(optimizer={"optimizer": "SCHEDULE_FREE_ADAMW"}, learning_rate_scheduler="COSINE")
    assert get(imported, "training.optimizer") == "schedulefree_adamw"
    assert get(imported, "training.lr_scheduler") == "constant"
    assert imported.unsupported == []
    assert "CONSTANT schedule" in notes(imported)["learning_rate_scheduler"]
    assert "learning_rate_scheduler" not in notes(convert(optimizer={"optimizer": "SCHEDULE_FREE_ADAMW"}))


def test_a_min_factor_only_a_decaying_schedule_reads_is_imported_only_with_one(convert):
    """Our check refuses `lr_min_factor` beside the constant schedule, which ignores it, as OneTrainer's does."""
    constant = convert(learning_rate_min_factor=0.1)
    assert (get(constant, "training.lr_min_factor"), constant.unsupported) == (None, [])
    assert "does not decay" in notes(constant)["learning_rate_min_factor"]
    cosine = convert(learning_rate_scheduler="COSINE", learning_rate_min_factor=0.1)
    assert get(cosine, "training.lr_min_factor") == 0.1
    assert "learning_rate_min_factor" not in notes(cosine)


def test_ema_previews_are_those_of_non_ema_sampling_false(convert):
    ema_only = convert(ema="CPU", non_ema_sampling=False)
    assert get(ema_only, "training.ema.enabled") is True
    assert ema_only.unsupported == []
    assert "non_ema_sampling" not in notes(ema_only)
    both = convert(ema="CPU")  # OneTrainer's default non_ema_sampling true: non-EMA previews as well
    assert both.unsupported == []
    assert "with the EMA weights only" in notes(both)["non_ema_sampling"]


def test_lora_dropout_is_kept_with_a_note_on_where_it_applies(convert):
    imported = convert(dropout_probability=0.1)
    assert get(imported, "lora.dropout") == 0.1
    assert imported.unsupported == []
    assert "at the rank (after lora_down)" in notes(imported)["dropout_probability"]
    assert "dropout_probability" not in notes(convert())


def test_masked_training_carries_its_unmasked_share_even_at_the_default(convert):
    masked = convert(masked_training=True)  # unmasked_probability 0.1: a tenth of the samples train unmasked
    assert get(masked, "loss.masked.enabled") is True
    assert get(masked, "loss.masked.unmasked_probability") == 0.1
    assert masked.unsupported == []
    assert get(convert(masked_training=True, unmasked_probability=0.0), "loss.masked.unmasked_probability") == 0.0
    unmasked = convert(unmasked_probability=0.5)
    assert unmasked.unsupported == []
    assert notes(unmasked)["unmasked_probability"] == "masked_training is off"


def test_a_windows_concept_file_name_is_found_beside_the_config(tmp_path, monkeypatch):
    (tmp_path / "training_concepts").mkdir()
    (tmp_path / "training_concepts" / "concepts.json").write_text(json.dumps([{"path": "images"}]), encoding="utf-8")
    config = {**BASE, "concept_file_name": "training_concepts\\concepts.json", "samples": []}
    (tmp_path / "config.json").write_text(json.dumps(config), encoding="utf-8")
    monkeypatch.chdir(tmp_path.parent)
    imported = import_onetrainer(tmp_path / "config.json")
    assert imported.concepts_from == str(tmp_path / "training_concepts" / "concepts.json")
    assert [concept["path"] for concept in get(imported, "data.concepts")] == ["images"]
    assert imported.unsupported == []


def test_a_missing_concept_file_is_a_note_that_says_how_to_give_the_concepts(tmp_path, monkeypatch):
    """OneTrainer's own presets name `training_concepts/concepts.json`, which a user's folder rarely holds."""
    (tmp_path / "config.json").write_text(json.dumps({**BASE, "concept_file_name": "nowhere.json"}), encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    imported = import_onetrainer(tmp_path / "config.json")
    assert "data.concepts.0.path=" in notes(imported)["concept_file_name"]
    assert "concept_file_name" not in unsupported(imported)
    assert "no such sample file" in notes(imported)["sample_definition_file_name"], "OneTrainer trains on without"


def test_a_sample_files_samples_take_the_model_types_defaults_and_inline_ones_the_generic(tmp_path):
    (tmp_path / "samples.json").write_text(json.dumps([{"prompt": "a red circle"}]), encoding="utf-8")
    sdxl = {**BASE, "model_type": "STABLE_DIFFUSION_XL_10_BASE", "concepts": []}
    (tmp_path / "config.json").write_text(
        json.dumps({**sdxl, "sample_definition_file_name": "samples.json"}), encoding="utf-8"
    )
    (from_file,) = get(import_onetrainer(tmp_path / "config.json"), "sampling.prompts")
    expected = {"width": 1024, "height": 1024, "steps": 30, "cfg": 7.5, "scheduler": "euler-a"}
    assert {key: from_file[key] for key in expected} == expected, "OneTrainer's SDXL sample defaults"
    (tmp_path / "config.json").write_text(json.dumps({**sdxl, "samples": [{"prompt": "x"}]}), encoding="utf-8")
    (inline,) = get(import_onetrainer(tmp_path / "config.json"), "sampling.prompts")
    generic = {"width": 512, "height": 512, "steps": 30, "cfg": 7.0, "scheduler": "ddim"}
    assert {key: inline[key] for key in generic} == generic, "OneTrainer reads an inline list over its generic ones"


@pytest.mark.parametrize(
    ("model_type", "base"), [("FLUX_DEV_1", "tiny:flux-dev"), ("STABLE_DIFFUSION_35", "tiny:sd35-medium")]
)
def test_flow_matching_previews_use_euler_whatever_noise_scheduler_says(convert, model_type, base):
    from onetrainer.util.config.onetrainer_json.load import check_imported

    euler = {"prompt": "b", "noise_scheduler": "EULER"}
    samples = [{"prompt": "a"}, euler, {"prompt": "c", "noise_scheduler": "UNIPC"}]
    imported = convert(model_type=model_type, base_model_name=base, samples=samples)
    assert [prompt["scheduler"] for prompt in get(imported, "sampling.prompts")] == ["euler"] * 3
    assert imported.unsupported == []
    assert "own Euler sampler" in notes(imported)["samples.2.noise_scheduler"]
    assert {"samples.0.noise_scheduler", "samples.1.noise_scheduler"}.isdisjoint(notes(imported))
    check_imported(imported, check_paths=False)  # "ddim" would not be a sampler of flow matching


def test_previews_come_before_training_unless_the_first_interval_is_skipped(convert):
    assert get(convert(), "sampling.before_training") is True, "OneTrainer samples at step 0 (10 minutes)"
    every = {"sample_after": 100, "sample_after_unit": "STEP"}
    assert get(convert(**every), "sampling.before_training") is True
    skipped = convert(**every, sample_skip_first=100)
    assert (get(skipped, "sampling.before_training"), skipped.unsupported) == (False, [])
    assert get(convert(**every, sample_skip_first=1), "sampling.before_training") is False, "first at step 100 too"
    assert "sample_skip_first" in unsupported(convert(**every, sample_skip_first=250))
    assert get(convert(sample_after_unit="NEVER"), "sampling.before_training") is False


def test_onetrainers_steps_are_batches_so_step_counts_are_divided_by_the_accumulation(convert):
    imported = convert(
        gradient_accumulation_steps=4,
        save_every=100,
        save_every_unit="STEP",
        sample_after=10,
        sample_after_unit="STEP",
        backup_after=2,
        backup_after_unit="STEP",
        validation=True,
        validate_after=8,
        validate_after_unit="STEP",
        text_encoder={"train": True, "stop_training_after": 40, "stop_training_after_unit": "STEP"},
        unet={"stop_training_after": 3, "stop_training_after_unit": "EPOCH"},
        learning_rate_warmup_steps=202,
    )
    assert get(imported, "saving.every") == "25 steps"
    assert get(imported, "sampling.every") == "2 steps"
    assert get(imported, "saving.backup_every") == "1 step"
    assert get(imported, "logging.validate_every") == "2 steps"
    assert get(imported, "parts.text_encoder.stop_after") == "10 steps"
    assert get(imported, "parts.unet.stop_after") == "3 epochs", "epochs are the same in both"
    assert get(imported, "training.warmup") == 50.0, "OneTrainer's own int(202 / 4)"
    assert imported.unsupported == []
    assert "10 batches, 4 accumulated per optimizer step, are 2.5 steps; 2 here" in notes(imported)["sample_after"]
    assert {"save_every", "validate_after", "text_encoder.stop_training_after"}.isdisjoint(notes(imported))


def test_a_schedule_free_optimizers_warm_up_is_taken_as_it_is(convert):
    """OneTrainer hands it to the optimizer unscaled (its own steps), not to the batch-counting scheduler."""
    imported = convert(
        optimizer={"optimizer": "SCHEDULE_FREE_ADAMW"}, gradient_accumulation_steps=4, learning_rate_warmup_steps=100
    )
    assert get(imported, "training.warmup") == 100.0
    one = convert(optimizer={"optimizer": "SCHEDULE_FREE_ADAMW"}, learning_rate_warmup_steps=1.0)
    assert (get(one, "training.warmup"), one.unsupported) == (1.0, []), "one step in both"
    assert "learning_rate_warmup_steps" not in notes(one)


def test_a_schedule_free_warm_up_fraction_keeps_our_meaning_with_a_note(convert):
    """OneTrainer hands 0.1 to the optimizer as 0.1 of a step: no warm-up, its first step at 10 times the rate."""
    imported = convert(optimizer={"optimizer": "SCHEDULE_FREE_ADAMW"}, learning_rate_warmup_steps=0.1)
    assert (get(imported, "training.warmup"), imported.unsupported) == (0.1, [])
    note = notes(imported)["learning_rate_warmup_steps"]
    assert "so it does not warm up (its first step is at 10 times the learning rate)" in note
    assert "imported as a warm-up over 0.1 of the run" in note


def test_the_layer_filter_is_what_trains_and_a_preset_fills_in_only_an_empty_one(convert):
    edited = convert(layer_filter_preset="attn-mlp", layer_filter="attn")  # OneTrainer trains the filter's layers
    assert get(edited, "parts.unet.lora_targets") == "attn"
    preset_only = convert(layer_filter_preset="attn-mlp")  # like OneTrainer's SDXL preset: an empty filter
    assert get(preset_only, "parts.unet.lora_targets") == "attn-mlp"
    assert "its UI fills in the attn-mlp preset's 'attentions'" in notes(preset_only)["layer_filter"]
    flux = {"model_type": "FLUX_DEV_1", "base_model_name": "tiny:flux-dev"}
    blocks = convert(**flux, layer_filter_preset="blocks")
    assert get(blocks, "parts.transformer") == {"train": True, "weight_dtype": "fp32"}, "our full: every block layer"
    assert get(blocks, "lora.targets") == "full"
    assert "layer_filter" in notes(blocks)
    attn_mlp = convert(**flux, layer_filter_preset="attn-mlp")
    assert re.compile(get(attn_mlp, "parts.transformer.lora_regex")).search("transformer_blocks.0.ff.net.2")
    assert "layer_filter" not in notes(convert(layer_filter_preset="custom", layer_filter="attentions"))


def test_an_empty_filter_with_the_full_preset_adapts_every_layer_onetrainer_does(convert):
    """OneTrainer's `full` adapts every linear and convolution layer, conv_in and the time embedding too, which
    our `full` preset leaves out; norms it cannot adapt."""
    import re as regex

    imported = convert(layer_filter_preset="full", layer_filter="")
    chosen = regex.compile(get(imported, "parts.unet.lora_regex"))
    for path in ("conv_in", "time_embedding.linear_1", "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"):
        assert chosen.search(path), path
    for path in ("down_blocks.0.resnets.0.norm1", "conv_norm_out", "mid_block.attentions.0.norm"):
        assert not chosen.search(path), path
    assert imported.unsupported == []


def test_layer_skip_on_an_encoder_read_at_no_hidden_layer_is_unsupported(convert):
    flux = convert(model_type="FLUX_DEV_1", base_model_name="tiny:flux-dev", text_encoder_2_layer_skip=1)
    assert "text_encoder_2_layer_skip" in unsupported(flux)
    assert get(flux, "parts.text_encoder_2.layer_skip") is None
    plain = convert(model_type="FLUX_DEV_1", base_model_name="tiny:flux-dev")
    assert "text_encoder_2_layer_skip" not in unsupported(plain)
