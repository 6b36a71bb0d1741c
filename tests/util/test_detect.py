"""Detection of models, LoRAs and embeddings, and safe reading of pickled checkpoints."""

from __future__ import annotations

import argparse
import pickle
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from onetrainer.util.detect import (
    EMBEDDING,
    LORA,
    MODEL,
    detect_path,
    detect_pipeline,
    detect_weights,
    load_pickle_weights,
)
from onetrainer.util.errors import UserError
from onetrainer.util.family import FamilySpec


def test_diffusers_folders_are_detected_by_family(
    tiny_sd15_dir: Path,
    tiny_sd2_dir: Path,
    tiny_sdxl_dir: Path,
    tiny_flux_dev_dir: Path,
    unregistered_pipeline_dir: Path,
) -> None:
    sd15, sd2, sdxl = detect_path(tiny_sd15_dir), detect_path(tiny_sd2_dir), detect_path(tiny_sdxl_dir)
    assert (sd15.kind, sd15.layout, sd15.family, sd15.prediction_type) == (MODEL, "diffusers", "sd15", "epsilon")
    assert sd15.spec is not None
    assert sd15.spec.name == "sd15"
    assert (sd2.family, sd2.prediction_type) == ("sd2", "v_prediction")
    assert (sdxl.kind, sdxl.layout, sdxl.family, sdxl.prediction_type) == (MODEL, "diffusers", "sdxl", "epsilon")
    assert sdxl.reason == "pipeline class StableDiffusionXLPipeline"
    flux = detect_path(tiny_flux_dev_dir)
    assert (flux.kind, flux.layout, flux.family) == (MODEL, "diffusers", "flux-dev")
    # No family makes this (made-up) pipeline class: a model of no known family, named by its class.
    other = detect_path(unregistered_pipeline_dir)
    assert (other.kind, other.family, other.spec, other.candidates) == (MODEL, None, None, ())
    assert "ZetaImagePipeline" in other.reason


def test_single_file_family_comes_from_text_encoder_keys() -> None:
    sd1 = {"cond_stage_model.transformer.text_model.embeddings.token_embedding.weight": (49408, 768)}
    sd2 = {"cond_stage_model.model.token_embedding.weight": (49408, 1024), "v_pred": (0,)}
    assert detect_weights(sd1, {}).family == "sd15"
    detected = detect_weights(sd2, {})
    assert (detected.kind, detected.layout, detected.family, detected.prediction_type) == (
        MODEL,
        "single-file",
        "sd2",
        "v_prediction",
    )


def test_metadata_wins_over_shapes() -> None:
    shapes = {"emb_params": (2, 32)}
    assert detect_weights(shapes, {}).family is None
    detected = detect_weights(shapes, {"modelspec.architecture": "stable-diffusion-v2-768-v/textual-inversion"})
    assert (detected.kind, detected.family, detected.prediction_type) == (EMBEDDING, "sd2", "v_prediction")
    kohya = {"lora_unet_mid_block_attentions_0_proj_in.lora_down.weight": (4, 32)}
    assert detect_weights(kohya, {"ss_base_model_version": "sd_v1"}).family == "sd15"


@pytest.mark.parametrize(
    ("shapes", "layout", "family"),
    [
        ({"emb_params": (2, 768)}, "a1111", "sd15"),
        ({"emb_params": (1, 1024)}, "a1111", "sd2"),
        ({"<cat>": (3, 768)}, "diffusers", "sd15"),
        ({"string_to_param.*": (2, 1024)}, "a1111", "sd2"),
        ({"emb_params": (2, 32)}, "a1111", None),
    ],
)
def test_embeddings_by_layout_and_width(shapes: dict, layout: str, family: str | None) -> None:
    detected = detect_weights(shapes, {})
    assert (detected.kind, detected.layout, detected.family) == (EMBEDDING, layout, family)


@pytest.mark.parametrize(
    ("shapes", "layout", "family", "adapter"),
    [
        (
            {"lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k.lora_down.weight": (4, 768)},
            "kohya",
            "sd15",
            "lora",
        ),
        (
            {"unet.down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.lora_A.weight": (4, 1024)},
            "peft",
            "sd2",
            "lora",
        ),
        ({"lora_te2_text_model_encoder_layers_0_mlp_fc1.lora_down.weight": (4, 1280)}, "kohya", "sdxl", "lora"),
        ({"lora_unet_input_blocks_4_1_proj_in.lora_down.weight": (4, 640)}, "kohya", "sdxl", "lora"),
        # LoRAs of a made-up transformer, under either kohya prefix: no family has these modules.
        ({"lora_transformer_zeta_blocks_0_attn_qkv.lora_down.weight": (4, 3072)}, "kohya", None, "lora"),
        ({"lora_unet_zeta_blocks_0_attn_qkv.lora_down.weight": (4, 3072)}, "kohya", None, "lora"),
        ({"lora_unet_mid_block_attentions_0_proj_in.hada_w1_b": (4, 32)}, "kohya", "sd2", "loha"),
        ({"lora_te_text_model_encoder_layers_0_mlp_fc1.lokr_w1": (2, 2)}, "kohya", None, "lokr"),
        ({"lora_unet_x.lora_down.weight": (4, 8), "lora_unet_x.dora_scale": (8, 1)}, "kohya", None, "dora"),
    ],
    ids=[
        "kohya-1x",
        "peft-2x",
        "two-encoders",
        "original-unet-names",
        "unregistered-transformer-prefix",
        "unregistered-unet-prefix",
        "loha",
        "lokr",
        "dora",
    ],
)
def test_loras_by_layout_family_and_kind(shapes: dict, layout: str, family: str | None, adapter: str) -> None:
    detected = detect_weights(shapes, {})
    assert (detected.kind, detected.layout, detected.family, detected.adapter) == (LORA, layout, family, adapter)


@pytest.mark.parametrize("prefix", ["lora_transformer_", "lora_unet_"])
def test_a_made_up_transformers_lora_is_nobodys(prefix: str) -> None:
    """Neither kohya prefix alone makes a LoRA any family's, not even an undetermined one."""
    detected = detect_weights({f"{prefix}zeta_blocks_0_attn_qkv.lora_down.weight": (4, 3072)}, {})
    assert (detected.kind, detected.family, detected.candidates) == (LORA, None, ())


@pytest.mark.parametrize(
    ("shapes", "reason"),
    [
        ({"lora_te2_text_model_encoder_layers_0_mlp_fc1.lora_down.weight": (4, 1280)}, "LoRA for two text encoders"),
        (
            {"lora_unet_input_blocks_4_1_proj_in.lora_down.weight": (4, 640)},
            "UNet modules under the original SGM names",
        ),
    ],
    ids=["two-encoders", "original-unet-names"],
)
def test_an_sdxl_lora_says_why_it_is_sdxl(shapes: dict, reason: str) -> None:
    detected = detect_weights(shapes, {})
    assert (detected.family, detected.reason) == ("sdxl", reason)
    assert detected.spec is not None
    assert detected.spec.name == "sdxl"


@pytest.mark.parametrize(
    "module",
    ["lora_transformer_single_transformer_blocks_0_attn_to_k", "lora_unet_double_blocks_0_img_attn_qkv"],
    ids=["diffusers-modules", "bfl-modules"],
)
def test_a_flux_lora_under_either_kohya_prefix_is_flux(module: str) -> None:
    """dev and schnell share the layout: the family stays open between them, and rules every other out."""
    detected = detect_weights({f"{module}.lora_down.weight": (4, 3072)}, {})
    assert (detected.kind, detected.layout, detected.family, detected.adapter) == (LORA, "kohya", None, "lora")
    assert detected.candidates == ("flux-dev", "flux-schnell")
    assert detected.could_be("flux-schnell")
    assert not detected.could_be("sd15")


def test_onetrainers_flux_names_are_flux_even_without_transformer_blocks() -> None:
    """OneTrainer names FLUX.1's T5 `lora_te2_` (SDXL's second encoder is `lora_te2_text_model_`), and its
    guidance embedder under diffusers' path (dev only)."""
    encoders = {
        "lora_te1_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight": (4, 768),
        "lora_te2_encoder_block_0_layer_0_SelfAttention_q.lora_down.weight": (4, 4096),
    }
    assert detect_weights(encoders, {}).candidates == ("flux-dev", "flux-schnell")
    guidance = {"lora_transformer_time_text_embed_guidance_embedder_linear_1.lora_down.weight": (4, 256)}
    assert detect_weights(guidance, {}).family == "flux-dev"


TRANSFORMER_LORA = {"transformer.zeta_blocks.0.attn.to_q.lora_A.weight": (4, 3072)}
"""A diffusers LoRA of a made-up transformer that no real family's recogniser claims."""


def test_component_prefixes_and_families_come_from_the_registered_specs(fake_family: FamilySpec) -> None:
    """A diffusers LoRA is known by a registered family's component name; its family says it is theirs."""
    detected = detect_weights(TRANSFORMER_LORA, {})
    found = (detected.kind, detected.layout, detected.family, detected.adapter)
    assert found == (LORA, "peft", fake_family.name, "lora")
    assert detected.spec is fake_family


def test_a_component_no_family_has_reads_as_bare_module_paths() -> None:
    detected = detect_weights({"prior.blocks.0.attn.to_q.lora_A.weight": (4, 64)}, {})
    assert (detected.kind, detected.layout, detected.family) == (LORA, "peft-bare", None)


def test_a_registered_familys_embedding_keys_and_metadata_are_known(fake_family: FamilySpec) -> None:
    detected = detect_weights({"te_a": (2, 64), "te_b": (2, 96)}, {})
    assert (detected.kind, detected.layout, detected.family) == (EMBEDDING, "a1111", fake_family.name)
    header = {"modelspec.architecture": f"{fake_family.modelspec_architecture}/lora"}
    assert detect_weights(TRANSFORMER_LORA, header).family == fake_family.name
    kohya = {"lora_unet_x.lora_down.weight": (4, 8)}
    assert detect_weights(kohya, {"ss_base_model_version": fake_family.kohya_base_model_version}).family == "dit-test"


def test_a_pipeline_class_names_its_family(fake_family: FamilySpec) -> None:
    detected = detect_pipeline({"_class_name": "TestDiTPipeline", "transformer": ["diffusers", "X"]}, {})
    assert (detected.kind, detected.layout, detected.family) == (MODEL, "diffusers", fake_family.name)


def test_one_pipeline_class_of_two_families_is_told_apart_by_their_configs() -> None:
    """1.x and 2.x share `StableDiffusionPipeline`: the UNet config (cross-attention width) decides."""
    index = {"_class_name": "StableDiffusionPipeline"}
    assert detect_pipeline(index, {"unet": {"cross_attention_dim": 1024}}).family == "sd2"
    assert detect_pipeline(index, {"unet": {"cross_attention_dim": 768}}).family == "sd15"
    unknown = detect_pipeline(index, {"unet": {}})
    assert (unknown.family, set(unknown.candidates)) == (None, {"sd15", "sd2"})


def test_conv_proj_in_says_sd1_on_tiny_widths() -> None:
    shapes = {"lora_unet_mid_block_attentions_0_proj_in.lora_down.weight": (4, 32, 1, 1)}
    assert detect_weights(shapes, {}).family == "sd15"


def test_unknown_tensors_are_refused_naming_some_keys() -> None:
    with pytest.raises(UserError, match=r"not a model, LoRA or embedding.*foo\.weight"):
        detect_weights({"foo.weight": (3, 3, 3), "bar.weight": (3, 3, 3)}, {}, name="x.safetensors")


def test_files_are_sniffed_not_trusted_by_suffix(tmp_path: Path) -> None:
    path = tmp_path / "lora.bin"
    save_file({"lora_unet_x_to_q.lora_down.weight": torch.zeros(4, 8)}, str(path))
    assert detect_path(path).kind == LORA
    text = tmp_path / "notes.safetensors"
    text.write_text("hello, this is no model")
    with pytest.raises(UserError, match="neither a safetensors file nor a PyTorch checkpoint"):
        detect_path(text)
    with pytest.raises(UserError, match="file or folder not found") as caught:
        detect_path(tmp_path / "missing.safetensors")
    assert str(tmp_path / "missing.safetensors") in (caught.value.hint or "")


def test_folder_without_model_index_is_refused(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"no model_index\.json"):
        detect_path(tmp_path)


def test_pickles_load_weights_only_and_unwrap_state_dict(tmp_path: Path) -> None:
    path = tmp_path / "model.ckpt"
    weights = {"model.diffusion_model.out.2.bias": torch.arange(4.0)}
    torch.save({"state_dict": weights, "global_step": 875000}, path)
    tensors, metadata = load_pickle_weights(path)
    assert torch.equal(tensors["model.diffusion_model.out.2.bias"], torch.arange(4.0))
    assert metadata == {"global_step": "875000"}


def test_a1111_pt_embedding_is_flattened(tmp_path: Path) -> None:
    path = tmp_path / "style.pt"
    torch.save({"string_to_token": {"*": 265}, "string_to_param": {"*": torch.ones(2, 768)}, "name": "style"}, path)
    detected = detect_path(path)
    assert (detected.kind, detected.layout, detected.family) == (EMBEDDING, "a1111", "sd15")


def test_unsafe_pickle_is_refused_with_our_explanation_only(tmp_path: Path) -> None:
    """torch's own text says re-running with weights_only=False "will likely succeed": never repeat it."""
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {"w": torch.ones(1)}, "hyper_parameters": argparse.Namespace(lr=1.0)}, path)
    with pytest.raises(UserError, match="refused") as info:
        detect_path(path)
    said = f"{info.value.message} {info.value.hint}"
    assert "argparse.Namespace" in info.value.message
    assert "would run code" in info.value.message
    assert "safetensors" in (info.value.hint or "")
    assert "weights_only" not in said
    assert "will likely succeed" not in said


class _Runs:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (print, ("pwned",))


def test_a_protocol_4_pickle_is_refused_without_torch_warnings(tmp_path: Path) -> None:
    """torch warns about the pickle protocol with a raw UserWarning, printed above our panel."""
    path = tmp_path / "evil.ckpt"
    with path.open("wb") as handle:
        pickle.dump({"state_dict": _Runs()}, handle, protocol=4)
    with warnings.catch_warnings(record=True) as caught, pytest.raises(UserError, match="refused") as info:
        warnings.simplefilter("always")
        detect_path(path)
    assert [str(warning.message) for warning in caught] == []
    assert "weights_only" not in f"{info.value.message} {info.value.hint}"


def test_truncated_pickle_is_a_user_error_with_a_hint(tmp_path: Path) -> None:
    path = tmp_path / "broken.ckpt"
    torch.save({"w": torch.ones(100)}, path)
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(UserError, match=r"broken\.ckpt: it is damaged") as info:
        detect_path(path)
    assert "again" in (info.value.hint or "")
    assert "This is an internal" not in info.value.message


def _checkpoint(tiny: str, path: Path, metadata: dict[str, str]) -> Path:
    """The tiny model's original single file as our saver writes it, with the header metadata another tool wrote."""
    from safetensors.torch import load_file

    from onetrainer.model_loader.pipeline import load_model
    from onetrainer.util.enums import TrainingMethod
    from onetrainer.util.registry import ModuleKind, lookup

    model = load_model(tiny)
    saver = lookup(ModuleKind.SAVER, model.spec.name)()
    saved = saver.save(model, path.with_suffix(".ours.safetensors"), method=TrainingMethod.FULL, dtype="fp32")[0]
    save_file(load_file(saved), str(path), metadata=metadata)
    return path


@pytest.mark.parametrize(
    ("tiny", "architecture", "family"),
    [
        ("tiny:sd35-large", "stable-diffusion-v3-medium", "sd35-large"),  # ComfyUI's CheckpointSave, any SD 3.x
        ("tiny:sd35-medium", "stable-diffusion-v3-medium", "sd35-medium"),
        ("tiny:flux-schnell", "flux-1-dev", "flux-schnell"),  # sd-scripts, a schnell fine-tune (no guidance_in)
    ],
)
def test_a_models_keys_overrule_metadata_naming_a_sibling_that_reads_the_same_layout(
    tmp_path: Path, tiny: str, architecture: str, family: str
) -> None:
    path = _checkpoint(tiny, tmp_path / "model.safetensors", {"modelspec.architecture": architecture})
    detection = detect_path(path)
    assert detection.family == family
    assert "not the header metadata's" in detection.reason


def test_an_explicit_model_type_the_keys_confirm_loads_despite_the_metadata(tmp_path: Path) -> None:
    from onetrainer.model_loader.pipeline import load_model

    path = _checkpoint(
        "tiny:sd35-large", tmp_path / "comfy.safetensors", {"modelspec.architecture": "stable-diffusion-v3-medium"}
    )
    assert load_model(path, model_type="sd35-large", config="tiny:sd35-large").model_type == "sd35-large"


def test_metadata_still_names_a_family_of_another_layout_over_the_keys(tmp_path: Path) -> None:
    """Keys overrule only within a group: a file whose metadata names another model is that model's."""
    path = _checkpoint("tiny:sd35-large", tmp_path / "model.safetensors", {"modelspec.architecture": "flux-1-dev"})
    assert (detect_path(path).family, detect_path(path).reason) == ("flux-dev", "header metadata")
