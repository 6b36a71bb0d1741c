from __future__ import annotations

from pathlib import Path

import pytest
import torch

from onetrainer.util.atomic import save_safetensors
from onetrainer.util.keymaps.engine import KeyMapError, KeyTable, convert
from onetrainer.util.keymaps.ldm_tables import SdLayout, openclip_rows
from onetrainer.util.keymaps.stable_diffusion_single_file import (
    detect_single_file_family,
    diffusers_to_single_file,
    from_single_file_stream,
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


def _assert_equal(expected: State, actual: State) -> None:
    assert expected.keys() == actual.keys()
    mismatched = [key for key in expected if not torch.equal(expected[key], actual[key])]
    assert mismatched == []


def test_round_trip_is_exact(tiny: tuple[str, Path, tuple[State, State, State]]) -> None:
    family, _, parts = tiny
    back = single_file_to_diffusers(diffusers_to_single_file(*parts, family), family)
    for expected, actual in zip(parts, back, strict=True):
        _assert_equal(expected, actual)


def test_diffusers_from_single_file_loads_identical_weights(
    tiny: tuple[str, Path, tuple[State, State, State]], tmp_path: Path
) -> None:
    from diffusers import StableDiffusionPipeline

    family, folder, parts = tiny
    path = tmp_path / "model.safetensors"
    save_safetensors(diffusers_to_single_file(*parts, family), path)
    pipe = StableDiffusionPipeline.from_single_file(
        path, config=str(folder), local_files_only=True, safety_checker=None, feature_extractor=None
    )
    for expected, module in zip(parts, (pipe.unet, pipe.vae, pipe.text_encoder), strict=True):
        _assert_equal(expected, module.state_dict())


def test_text_encoder_layout_follows_the_family(tiny: tuple[str, Path, tuple[State, State, State]]) -> None:
    family, _, parts = tiny
    keys = set(diffusers_to_single_file(*parts, family))
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
    wrapped = {f"text_model.{key}": value for key, value in te.items()}
    flat = diffusers_to_single_file(unet, vae, te, family)
    assert diffusers_to_single_file(unet, vae, wrapped, family).keys() == flat.keys()
    _, _, te_back = single_file_to_diffusers(flat, family, hf_text_model=True)
    assert te_back.keys() == wrapped.keys()


def test_streaming_read_from_a_file_matches_whole_dict(
    tiny: tuple[str, Path, tuple[State, State, State]], tmp_path: Path
) -> None:
    """Names from the header fix the layout; tensors then come one at a time from the file."""
    from safetensors import safe_open

    family, _, parts = tiny
    path = tmp_path / "model.safetensors"
    save_safetensors(diffusers_to_single_file(*parts, family), path)
    stream = from_single_file_stream(read_safetensors_header(path)[1], family)
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
    sd = diffusers_to_single_file(unet.state_dict(), {}, {}, "sd15")
    assert infer_diffusers_model_type(sd) == "v1"
    _assert_equal(unet.state_dict(), convert_ldm_unet_checkpoint(sd, dict(unet.config)))
    _assert_equal(unet.state_dict(), single_file_to_diffusers(sd, "sd15")[0])


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
    sd = diffusers_to_single_file(*parts, family)
    extras = ["alphas_cumprod", "model_ema.decay", "cond_stage_model.model.logit_scale", "v_pred"]
    sd.update({key: torch.zeros(1) for key in extras})
    for expected, actual in zip(parts, single_file_to_diffusers(sd, family), strict=True):
        _assert_equal(expected, actual)


def test_text_encoder_layers_past_the_limit_are_dropped(
    tiny: tuple[str, Path, tuple[State, State, State]],
) -> None:
    """Real SD2 files hold a 24th OpenCLIP layer that diffusers' 23-layer encoder does not have."""
    family, _, parts = tiny
    _, _, te = single_file_to_diffusers(diffusers_to_single_file(*parts, family), family, text_encoder_layers=1)
    assert te
    assert not any(".layers.1." in key for key in te)
    assert any(".layers.0." in key for key in te)


def test_unknown_keys_raise_with_every_key_listed(tiny: tuple[str, Path, tuple[State, State, State]]) -> None:
    family, _, parts = tiny
    sd = diffusers_to_single_file(*parts, family)
    sd["model.diffusion_model.mystery.weight"] = torch.zeros(1)
    with pytest.raises(KeyMapError, match="mystery"):
        single_file_to_diffusers(sd, family)


def test_v_prediction_marker_is_written_and_detected(
    tiny: tuple[str, Path, tuple[State, State, State]], tmp_path: Path
) -> None:
    family, _, parts = tiny
    path = tmp_path / "v.safetensors"
    save_safetensors(diffusers_to_single_file(*parts, family, v_prediction=True), path)
    info = detect_single_file_family(read_safetensors_header(path)[1])
    assert (info.family, info.prediction_type) == (family, "v")
    assert info.components == {"unet", "vae", "text_encoder"}
    assert info.in_channels == 4


def test_detection_without_marker_leaves_prediction_unknown(
    tiny: tuple[str, Path, tuple[State, State, State]],
) -> None:
    family, _, parts = tiny
    sd = diffusers_to_single_file(*parts, family)
    info = detect_single_file_family({key: tuple(value.shape) for key, value in sd.items()})
    assert (info.family, info.prediction_type, info.context_dim) == (family, None, 32)


def test_family_is_detected_from_a_unet_alone(
    tiny: tuple[str, Path, tuple[State, State, State]],
) -> None:
    family, _, (unet, _, _) = tiny
    sd = diffusers_to_single_file(unet, {}, {}, family)
    info = detect_single_file_family({key: tuple(value.shape) for key, value in sd.items()})
    assert (info.family, info.components) == (family, {"unet"})


UNET_K = "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"


@pytest.mark.parametrize(
    ("shapes", "family"),
    [
        ({UNET_K: (320, 768)}, "sd15"),
        ({UNET_K: (320, 1024)}, "sd2"),
        ({UNET_K: (640, 2048)}, "sdxl"),
        ({"conditioner.embedders.1.model.positional_embedding": (77, 1280)}, "sdxl"),
        ({"conditioner.embedders.0.model.text_projection": (1280, 1280)}, "sdxl-refiner"),
        ({"double_blocks.0.img_attn.qkv.weight": (9, 3)}, "flux"),
        ({"model.diffusion_model.label_emb.0.0.weight": (8, 4)}, "sdxl"),
    ],
)
def test_family_markers(shapes: dict[str, tuple[int, ...]], family: str) -> None:
    assert detect_single_file_family(shapes).family == family


def test_unknown_layout_reports_what_was_recognised() -> None:
    info = detect_single_file_family({"first_stage_model.decoder.conv_in.weight": ("F16", [8, 4, 3, 3])})
    assert info.family is None
    assert info.components == {"vae"}
    assert info.reason


def test_inpainting_unet_reports_nine_input_channels() -> None:
    info = detect_single_file_family({"model.diffusion_model.input_blocks.0.0.weight": (320, 9, 3, 3)})
    assert info.in_channels == 9
