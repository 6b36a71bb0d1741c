from __future__ import annotations

from pathlib import Path

import pytest
import torch

from onetrainer.util.atomic import save_safetensors
from onetrainer.util.family import get_family, recognise
from onetrainer.util.keymaps.engine import KeyMapError, KeyTable, convert
from onetrainer.util.keymaps.ldm_tables import SdLayout, openclip_rows
from onetrainer.util.keymaps.stable_diffusion_single_file import (
    CLIP_LAYOUT,
    StableDiffusionSingleFile,
    diffusers_to_single_file,
    single_file_to_diffusers,
)
from onetrainer.util.safetensors_meta import read_safetensors_header

State = dict[str, torch.Tensor]
FIXTURES = {"sd15": "tiny_sd15_dir", "sd2": "tiny_sd2_dir"}


def _components(folder: Path) -> tuple[State, State, State]:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel

    return (
        UNet2DConditionModel.from_pretrained(folder, subfolder="unet").state_dict(),
        AutoencoderKL.from_pretrained(folder, subfolder="vae").state_dict(),
        CLIPTextModel.from_pretrained(folder, subfolder="text_encoder").state_dict(),
    )


@pytest.fixture(scope="module", params=["sd15", "sd2"])
def tiny(request: pytest.FixtureRequest) -> tuple[str, Path, tuple[State, State, State]]:
    """(family, diffusers folder, (unet, vae, text encoder) state dicts) of a tiny model."""
    folder = request.getfixturevalue(FIXTURES[request.param])
    return request.param, folder, _components(folder)


def _layout(family: str) -> StableDiffusionSingleFile:
    layout = get_family(family).single_file
    assert isinstance(layout, StableDiffusionSingleFile)
    return layout


def _components_in(shapes: dict[str, tuple[int, ...]], family: str) -> set[str]:
    """The components a file holds, by the family's single-file key prefixes."""
    prefixes = _layout(family).component_prefixes
    return {name for prefix, name in prefixes if any(key.startswith(prefix) for key in shapes)}


def _shapes(sd: State) -> dict[str, tuple[int, ...]]:
    return {key: tuple(value.shape) for key, value in sd.items()}


def _assert_equal(expected: State, actual: State) -> None:
    assert expected.keys() == actual.keys()
    mismatched = [key for key in expected if not torch.equal(expected[key], actual[key])]
    assert mismatched == []


def test_round_trip_is_exact(tiny: tuple[str, Path, tuple[State, State, State]]) -> None:
    family, _, parts = tiny
    back = single_file_to_diffusers(diffusers_to_single_file(*parts, _layout(family)), _layout(family))
    for expected, actual in zip(parts, back, strict=True):
        _assert_equal(expected, actual)


def test_diffusers_from_single_file_loads_identical_weights(
    tiny: tuple[str, Path, tuple[State, State, State]], tmp_path: Path
) -> None:
    from diffusers import StableDiffusionPipeline

    family, folder, parts = tiny
    path = tmp_path / "model.safetensors"
    save_safetensors(diffusers_to_single_file(*parts, _layout(family)), path)
    pipe = StableDiffusionPipeline.from_single_file(
        path, config=str(folder), local_files_only=True, safety_checker=None, feature_extractor=None
    )
    for expected, module in zip(parts, (pipe.unet, pipe.vae, pipe.text_encoder), strict=True):
        _assert_equal(expected, module.state_dict())


def test_text_encoder_layout_follows_the_family(tiny: tuple[str, Path, tuple[State, State, State]]) -> None:
    family, _, parts = tiny
    keys = set(diffusers_to_single_file(*parts, _layout(family)))
    openclip = {
        "cond_stage_model.model.positional_embedding",
        "cond_stage_model.model.token_embedding.weight",
        "cond_stage_model.model.ln_final.weight",
        "cond_stage_model.model.transformer.resblocks.1.attn.in_proj_weight",
        "cond_stage_model.model.transformer.resblocks.1.mlp.c_fc.bias",
    }
    clip = "cond_stage_model.transformer.text_model.encoder.layers.1.self_attn.q_proj.weight"
    assert (openclip <= keys, clip in keys) == ((True, False) if family == "sd2" else (False, True))


def test_text_encoder_keys_with_or_without_text_model_give_one_file(
    tiny: tuple[str, Path, tuple[State, State, State]],
) -> None:
    family, _, (unet, vae, te) = tiny
    bare = {key.removeprefix("text_model."): value for key, value in te.items()}  # (transformers < 5.6 wraps them)
    wrapped = {f"text_model.{key}": value for key, value in bare.items()}
    flat = diffusers_to_single_file(unet, vae, bare, _layout(family))
    assert diffusers_to_single_file(unet, vae, wrapped, _layout(family)).keys() == flat.keys()
    _, _, te_back = single_file_to_diffusers(flat, _layout(family), hf_text_model=True)
    assert te_back.keys() == wrapped.keys()


def test_a_1x_file_without_the_text_model_wrapper_reads_the_same_weights(tiny_sd15_dir: Path, tmp_path: Path) -> None:
    """Early 1.x checkpoints keep CLIP under `cond_stage_model.transformer.` directly (A1111 and ComfyUI read
    them); the loader and `inspect` read them as the text encoder."""
    from onetrainer.inspection.dispatch import inspect_path
    from onetrainer.model_loader.pipeline import load_model

    parts = _components(tiny_sd15_dir)
    modern = diffusers_to_single_file(*parts, _layout("sd15"))
    legacy = {
        key.replace("cond_stage_model.transformer.text_model.", "cond_stage_model.transformer."): value
        for key, value in modern.items()
    }
    assert not any(key.startswith("cond_stage_model.transformer.text_model.") for key in legacy)
    _assert_equal(parts[2], single_file_to_diffusers(legacy, _layout("sd15"))[2])
    path = tmp_path / "legacy.safetensors"
    save_safetensors(legacy, path)
    model = load_model(path, config=str(tiny_sd15_dir))
    _assert_equal(parts[2], model.text_encoder.state_dict())
    assert "other" not in inspect_path(path).details["components"]


def test_streaming_read_from_a_file_matches_whole_dict(
    tiny: tuple[str, Path, tuple[State, State, State]], tmp_path: Path
) -> None:
    """Names from the header fix the layout; tensors then come one at a time from the file."""
    from safetensors import safe_open

    family, _, parts = tiny
    path = tmp_path / "model.safetensors"
    save_safetensors(diffusers_to_single_file(*parts, _layout(family)), path)
    stream = _layout(family).reader(read_safetensors_header(path)[1])
    streamed: State = {}
    with safe_open(path, "pt") as handle:
        for key in handle.keys():  # noqa: SIM118 - safe_open is not a mapping
            streamed.update(stream.feed(key, handle.get_tensor(key)))
    stream.finish()
    for name, expected in zip(("unet", "vae", "text_encoder"), parts, strict=True):
        _assert_equal(
            {f"{name}.{key}": value for key, value in expected.items()},
            {key: value for key, value in streamed.items() if key.startswith(f"{name}.")},
        )


def test_sd_sized_unet_layout_matches_diffusers_own_converter() -> None:
    """Four levels of two layers, as in real SD 1.5, at tiny width: the index arithmetic must agree."""
    from diffusers import UNet2DConditionModel
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint, infer_diffusers_model_type

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=8,
        block_out_channels=(32, 32, 64, 64),
        layers_per_block=2,
        cross_attention_dim=32,
        attention_head_dim=8,
        norm_num_groups=32,
    )
    sd = diffusers_to_single_file(unet.state_dict(), {}, {}, CLIP_LAYOUT)
    assert infer_diffusers_model_type(sd) == "v1"
    _assert_equal(unet.state_dict(), convert_ldm_unet_checkpoint(sd, dict(unet.config)))
    _assert_equal(unet.state_dict(), single_file_to_diffusers(sd, CLIP_LAYOUT)[0])


def test_openclip_table_with_projection_matches_diffusers_own_converter() -> None:
    """The OpenCLIP rows also serve SDXL's second encoder: check them against diffusers' reader."""
    from diffusers.loaders.single_file_utils import convert_open_clip_checkpoint
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    torch.manual_seed(0)
    config = CLIPTextConfig(
        vocab_size=99, hidden_size=64, intermediate_size=37, projection_dim=32, num_attention_heads=4,
        num_hidden_layers=2, bos_token_id=0, eos_token_id=1, pad_token_id=1, hidden_act="gelu",
    )  # fmt: skip
    model = CLIPTextModelWithProjection(config)
    state = {f"text_encoder_2.{key}": value for key, value in model.state_dict().items()}
    layout = SdLayout.from_diffusers_keys(k.replace("_2.", ".", 1) for k in state)
    prefix = "conditioner.embedders.1.model."
    rows = openclip_rows(layout, True, with_projection=True, src="text_encoder_2.", dst=prefix)
    checkpoint = convert(KeyTable(rows), state)
    assert checkpoint[prefix + "text_projection"].shape == (64, 32)
    expected = {key.removeprefix("text_encoder_2."): value for key, value in state.items()}
    _assert_equal(expected, convert_open_clip_checkpoint(model, checkpoint, prefix=prefix))


def test_extra_checkpoint_keys_are_dropped_on_read(
    tiny: tuple[str, Path, tuple[State, State, State]],
) -> None:
    family, _, parts = tiny
    sd = diffusers_to_single_file(*parts, _layout(family))
    extras = ["alphas_cumprod", "model_ema.decay", "cond_stage_model.model.logit_scale", "v_pred"]
    sd.update({key: torch.zeros(1) for key in extras})
    for expected, actual in zip(parts, single_file_to_diffusers(sd, _layout(family)), strict=True):
        _assert_equal(expected, actual)


def test_text_encoder_layers_past_the_limit_are_dropped(
    tiny: tuple[str, Path, tuple[State, State, State]],
) -> None:
    """Real SD2 files hold a 24th OpenCLIP layer that diffusers' 23-layer encoder does not have."""
    family, _, parts = tiny
    layout = _layout(family)
    _, _, te = single_file_to_diffusers(diffusers_to_single_file(*parts, layout), layout, text_encoder_layers=1)
    assert te
    assert not any(".layers.1." in key for key in te)
    assert any(".layers.0." in key for key in te)


def test_unknown_keys_raise_with_every_key_listed(tiny: tuple[str, Path, tuple[State, State, State]]) -> None:
    family, _, parts = tiny
    sd = diffusers_to_single_file(*parts, _layout(family))
    sd["model.diffusion_model.mystery.weight"] = torch.zeros(1)
    with pytest.raises(KeyMapError, match="mystery"):
        single_file_to_diffusers(sd, _layout(family))


def test_v_prediction_marker_is_written_and_recognised(
    tiny: tuple[str, Path, tuple[State, State, State]], tmp_path: Path
) -> None:
    family, _, parts = tiny
    path = tmp_path / "v.safetensors"
    save_safetensors(diffusers_to_single_file(*parts, _layout(family), prediction_type="v_prediction"), path)
    shapes = {key: shape for key, (_, shape) in read_safetensors_header(path)[1].items()}
    evidence = recognise("single_file", shapes)
    assert evidence is not None
    assert (evidence.family, evidence.prediction_type) == (family, "v_prediction")
    assert _components_in(shapes, family) == {"unet", "vae", "text_encoder"}


def test_recognition_without_marker_leaves_prediction_unknown(
    tiny: tuple[str, Path, tuple[State, State, State]],
) -> None:
    family, _, parts = tiny
    evidence = recognise("single_file", _shapes(diffusers_to_single_file(*parts, _layout(family))))
    assert evidence is not None
    assert (evidence.family, evidence.prediction_type) == (family, None)


def test_family_is_recognised_from_a_unet_alone(
    tiny: tuple[str, Path, tuple[State, State, State]],
) -> None:
    """Tiny UNets have no real width: the attention projections (conv for 1.x, linear for 2.x) tell."""
    family, _, (unet, _, _) = tiny
    shapes = _shapes(diffusers_to_single_file(unet, {}, {}, _layout(family)))
    evidence = recognise("single_file", shapes)
    assert evidence is not None
    assert evidence.family == family
    assert _components_in(shapes, family) == {"unet"}


UNET_K = "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"


SDXL_UNET = {UNET_K: (640, 2048), "model.diffusion_model.label_emb.0.0.weight": (1280, 2816)}
SDXL_CONDITIONER = {"conditioner.embedders.1.model.positional_embedding": (77, 1280)}
SDXL_LABEL_EMBEDDING = {"model.diffusion_model.label_emb.0.0.weight": (8, 4)}
REFINER_CONDITIONER = {"conditioner.embedders.0.model.text_projection": (1280, 1280)}
FLUX = {"double_blocks.0.img_attn.qkv.weight": (9, 3), "vector_in.in_layer.weight": (3, 768)}
SD3 = {"model.diffusion_model.joint_blocks.0.x_block.attn.qkv.weight": (9, 3)}
ZETA = {"model.diffusion_model.zeta_blocks.0.attn.qkv.weight": (9, 3)}
"""A made-up architecture that no family, registered or to come, claims."""


@pytest.mark.parametrize(
    ("shapes", "family", "reason"),
    [
        ({UNET_K: (320, 768)}, "sd15", "cross-attention width 768"),
        ({UNET_K: (320, 1024)}, "sd2", "cross-attention width 1024"),
        (
            {"cond_stage_model.transformer.text_model.embeddings.token_embedding.weight": (49408, 768)},
            "sd15",
            "CLIP text encoder under cond_stage_model.transformer",
        ),
        ({"cond_stage_model.model.token_embedding.weight": (49408, 1024)}, "sd2", "OpenCLIP text encoder"),
        (SDXL_UNET, "sdxl", "UNet with size conditioning (label_emb)"),
        (SDXL_CONDITIONER, "sdxl", "OpenCLIP bigG text encoder under conditioner.embedders.1"),
        (SDXL_LABEL_EMBEDDING, "sdxl", "UNet with size conditioning (label_emb)"),
        (FLUX, "flux-schnell", "BFL transformer without a guidance embedder"),
    ],
    ids=[
        "unet-1x",
        "unet-2x",
        "clip-1x",
        "openclip-2x",
        "added-conditioning-unet",
        "two-encoder-conditioner",
        "label-embedding",
        "flux-transformer",
    ],
)
def test_family_markers(shapes: dict[str, tuple[int, ...]], family: str, reason: str) -> None:
    evidence = recognise("single_file", shapes)
    assert evidence is not None
    assert evidence.family == family
    assert reason in evidence.reason


@pytest.mark.parametrize(
    "shapes",
    [SDXL_UNET, SDXL_CONDITIONER, SDXL_LABEL_EMBEDDING, REFINER_CONDITIONER, FLUX, SD3],
    ids=["added-conditioning-unet", "two-encoder-conditioner", "label-embedding", "refiner-conditioner", "flux", "sd3"],
)
def test_the_sd_recognisers_make_no_guess_for_other_architectures(shapes: dict[str, tuple[int, ...]]) -> None:
    """An SGM, refiner or DiT file is not a 1.x/2.x file, whatever else claims it."""
    assert recognise("single_file", shapes, [get_family("sd15"), get_family("sd2")]) is None


@pytest.mark.parametrize("shapes", [REFINER_CONDITIONER, ZETA], ids=["refiner-conditioner", "zeta"])
def test_other_architectures_are_not_claimed(shapes: dict[str, tuple[int, ...]]) -> None:
    """Files of architectures no family makes are nobody's: no registered family guesses at them."""
    assert recognise("single_file", shapes) is None


def test_a_vae_alone_is_not_recognised() -> None:
    assert recognise("single_file", {"first_stage_model.decoder.conv_in.weight": (8, 4, 3, 3)}) is None
    assert _components_in({"first_stage_model.decoder.conv_in.weight": (8, 4, 3, 3)}, "sd15") == {"vae"}


def test_inpainting_unet_reports_nine_input_channels(
    tiny: tuple[str, Path, tuple[State, State, State]], tmp_path: Path
) -> None:
    from onetrainer.inspection.dispatch import inspect_path

    family, _, parts = tiny
    sd = diffusers_to_single_file(*parts, _layout(family))
    conv_in = "model.diffusion_model.input_blocks.0.0.weight"
    sd[conv_in] = torch.zeros(sd[conv_in].shape[0], 9, 3, 3)
    save_safetensors(sd, tmp_path / "inpainting.safetensors")
    result = inspect_path(tmp_path / "inpainting.safetensors")
    assert (result.model_type, result.details["in_channels"]) == (family, 9)
    assert "an inpainting or instruct-pix2pix model: its UNet takes 9 input channels" in result.summary
