from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from onetrainer.util.atomic import save_safetensors
from onetrainer.util.family import LoraNaming, get_family
from onetrainer.util.keymaps.engine import KeyMapError
from onetrainer.util.keymaps.kohya_names import UNET_CLIP_COMPOUND_NAMES, DottedKohyaNaming
from onetrainer.util.keymaps.lora import INPUT_MAGNITUDE, detect_lora_format, kohya_to_peft, peft_to_kohya
from onetrainer.util.keymaps.lora_peft import (
    diffusers_lora_metadata,
    peft_adapter_state,
    peft_lora_config_kwargs,
)
from onetrainer.util.tiny.models import (
    build_tiny_sd2_pipeline,
    build_tiny_sd15_pipeline,
    build_tiny_sdxl_pipeline,
)

UNET_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2"]
UNET_TARGETS += ["conv1", "conv2", "time_emb_proj", "conv_shortcut", "downsamplers.0.conv"]
TE_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"]
BUILDERS: dict[str, Callable[[], Any]] = {
    "sd15": build_tiny_sd15_pipeline,
    "sd2": lambda: build_tiny_sd2_pipeline(v_prediction=False),
}
TWO_ENCODER_NAMING = DottedKohyaNaming.of(
    (("lora_unet_", "unet"), ("lora_te1_", "text_encoder"), ("lora_te2_", "text_encoder_2")),
    UNET_CLIP_COMPOUND_NAMES,
    text_encoders=("text_encoder", "text_encoder_2"),
    projected=("text_encoder_2",),
)
"""A dotted naming of a UNet with two CLIP text encoders (one projected), as sd-scripts names them."""


def _naming(family: str) -> LoraNaming:
    naming = get_family(family).lora_naming
    assert naming is not None
    return naming


def _sd15_naming() -> DottedKohyaNaming:
    naming = _naming("sd15")
    assert isinstance(naming, DottedKohyaNaming)
    return naming


def _adapt(pipe: Any) -> None:
    """LoRA on UNet and text encoder, alpha != rank, one rank/alpha override, random non-zero lora_B."""
    from peft import LoraConfig, inject_adapter_in_model

    unet_config = LoraConfig(
        r=4, lora_alpha=2, target_modules=UNET_TARGETS, rank_pattern={"to_k": 2}, alpha_pattern={"conv1": 8}
    )
    inject_adapter_in_model(unet_config, pipe.unet)
    inject_adapter_in_model(LoraConfig(r=4, lora_alpha=8, target_modules=TE_TARGETS), pipe.text_encoder)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for model in (pipe.unet, pipe.text_encoder):
            for name, param in model.named_parameters():
                if "lora_B" in name:
                    param.copy_(torch.randn(param.shape, generator=generator) * 0.1)


def _outputs(pipe: Any) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    latents = torch.randn(1, 4, 8, 8, generator=generator)
    ids = torch.randint(0, 1000, (1, 77), generator=generator)
    with torch.no_grad():
        hidden = pipe.text_encoder(ids)[0]
        return hidden, pipe.unet(latents, 10, encoder_hidden_states=hidden).sample


def _adapter(pipe: Any) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    unet, unet_alphas = peft_adapter_state(pipe.unet, "unet")
    te, te_alphas = peft_adapter_state(pipe.text_encoder, "text_encoder")
    return {**unet, **te}, {**unet_alphas, **te_alphas}


Adapted = tuple[str, dict[str, torch.Tensor], dict[str, float], tuple[torch.Tensor, torch.Tensor]]


@pytest.fixture(scope="module")
def adapted_cache() -> dict[str, Adapted]:
    return {}


def _adapted(family: str, cache: dict[str, Adapted]) -> Adapted:
    """(family, PEFT tensors, alphas, reference outputs of the adapted pipeline), built once per family."""
    if family not in cache:
        pipe = BUILDERS[family]()
        _adapt(pipe)
        cache[family] = (family, *_adapter(pipe), _outputs(pipe))
    return cache[family]


@pytest.fixture(scope="module", params=list(BUILDERS))
def adapted(request: pytest.FixtureRequest, adapted_cache: dict[str, Adapted]) -> Adapted:
    return _adapted(request.param, adapted_cache)


@pytest.fixture(scope="module")
def adapted_sd15(adapted_cache: dict[str, Adapted]) -> Adapted:
    """The SD 1.5 case alone, for checks whose SD2 variant would test nothing new."""
    return _adapted("sd15", adapted_cache)


def _load_and_compare(family: str, path: Path, reference: tuple[torch.Tensor, torch.Tensor]) -> None:
    pipe = BUILDERS[family]()
    base = _outputs(pipe)
    pipe.load_lora_weights(str(path.parent), weight_name=path.name)
    for expected, before, actual in zip(reference, base, _outputs(pipe), strict=True):
        assert not torch.allclose(expected, before, atol=1e-3)  # the LoRA changes the output
        torch.testing.assert_close(actual, expected, atol=1e-5, rtol=0)


def test_kohya_file_loads_in_diffusers_with_the_same_effect(adapted: Adapted, tmp_path: Path) -> None:
    family, sd, alphas, reference = adapted
    kohya = peft_to_kohya(sd, alphas, _naming(family))
    assert "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.lora_down.weight" in kohya
    assert "lora_te_text_model_encoder_layers_0_self_attn_q_proj.alpha" in kohya
    save_safetensors(kohya, tmp_path / "lora.safetensors")
    _load_and_compare(family, tmp_path / "lora.safetensors", reference)


def test_diffusers_layout_file_keeps_alphas_through_its_metadata(adapted_sd15: Adapted, tmp_path: Path) -> None:
    family, sd, alphas, reference = adapted_sd15
    save_safetensors(sd, tmp_path / "pytorch_lora_weights.safetensors", diffusers_lora_metadata(sd, alphas))
    _load_and_compare(family, tmp_path / "pytorch_lora_weights.safetensors", reference)


def test_kohya_peft_kohya_round_trip_is_exact(adapted: Adapted) -> None:
    family, sd, alphas, _ = adapted
    kohya = {key: value.half() for key, value in peft_to_kohya(sd, alphas, _naming(family)).items()}
    peft_sd, peft_alphas = kohya_to_peft(kohya, _naming(family))
    assert peft_sd.keys() == sd.keys()
    assert peft_alphas == alphas
    again = peft_to_kohya(peft_sd, peft_alphas, _naming(family))
    assert again.keys() == kohya.keys()
    assert all(torch.equal(again[k], kohya[k]) and again[k].dtype == torch.float16 for k in kohya if ".alpha" not in k)
    alphas_again = {k: tensor for k, tensor in again.items() if k.endswith(".alpha")}
    assert all(tensor.dtype == torch.float32 and tensor == kohya[k].float() for k, tensor in alphas_again.items())


def test_alpha_is_a_scalar_and_a_missing_alpha_means_scale_one(adapted_sd15: Adapted) -> None:
    family, sd, _, _ = adapted_sd15
    kohya = peft_to_kohya(sd, None, _naming(family))
    name = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_k"
    assert kohya[f"{name}.alpha"].shape == ()
    assert kohya[f"{name}.alpha"].item() == 2  # rank 2 from the rank pattern: scale 1
    del kohya[f"{name}.alpha"]
    _, alphas = kohya_to_peft(kohya, _naming(family))
    assert alphas["unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_k"] == 2.0


def test_config_kwargs_rebuild_the_adapter(adapted_sd15: Adapted) -> None:
    from peft import LoraConfig, inject_adapter_in_model, set_peft_model_state_dict

    family, sd, alphas, reference = adapted_sd15
    pipe = BUILDERS[family]()
    for component in ("unet", "text_encoder"):
        model = getattr(pipe, component)
        inject_adapter_in_model(LoraConfig(**peft_lora_config_kwargs(sd, alphas, component)), model)
        own = {k.removeprefix(f"{component}."): v for k, v in sd.items() if k.startswith(f"{component}.")}
        assert not set_peft_model_state_dict(model, own).unexpected_keys
    for expected, actual in zip(reference, _outputs(pipe), strict=True):
        torch.testing.assert_close(actual, expected, atol=1e-5, rtol=0)


def _module_names(model: torch.nn.Module) -> list[str]:
    layers = (torch.nn.Linear, torch.nn.Conv2d, torch.nn.Embedding, torch.nn.LayerNorm, torch.nn.GroupNorm)
    return [name for name, module in model.named_modules() if isinstance(module, layers)]


@pytest.mark.parametrize("layout", ["one-encoder", "two-encoders"])
def test_every_module_name_survives_the_kohya_underscores(layout: str) -> None:
    """The dotted naming reads back every module of a UNet with one or two CLIP text encoders (SDXL's
    added-conditioning UNet included), so a family of either shape can use it as it is."""
    two = layout == "two-encoders"
    pipe = build_tiny_sdxl_pipeline() if two else build_tiny_sd15_pipeline()
    naming = TWO_ENCODER_NAMING if two else _sd15_naming()
    components = ["unet", "text_encoder"] + (["text_encoder_2"] if two else [])
    for component in components:
        for name in _module_names(getattr(pipe, component)):
            module = f"{component}.{name}"
            assert naming.from_kohya(naming.to_kohya(module)) == module


def test_text_encoder_names_keep_text_model_for_kohya() -> None:
    naming = _naming("sd2")
    assert isinstance(naming, DottedKohyaNaming)
    name = naming.to_kohya("text_encoder.encoder.layers.3.mlp.fc1")
    assert name == "lora_te_text_model_encoder_layers_3_mlp_fc1"
    assert naming.to_kohya("text_encoder.text_model.encoder.layers.3.mlp.fc1") == name
    assert naming.from_kohya(name, hf_text_model=True) == "text_encoder.text_model.encoder.layers.3.mlp.fc1"
    assert naming.from_kohya(name, hf_text_model=False) == "text_encoder.encoder.layers.3.mlp.fc1"


def _tiny_net() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.ModuleDict({"proj": torch.nn.Linear(8, 6), "conv": torch.nn.Conv2d(4, 6, 3)})


def _randomise(model: torch.nn.Module) -> None:
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "base_layer" not in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.3)


def test_dora_scale_is_stored_on_the_output_axis_and_reproduces_peft() -> None:
    from peft import LoraConfig, inject_adapter_in_model

    net = inject_adapter_in_model(
        LoraConfig(r=2, lora_alpha=3, target_modules=["proj", "conv"], use_dora=True), _tiny_net()
    )
    _randomise(net)
    sd, alphas = peft_adapter_state(net, "unet")
    kohya = peft_to_kohya(sd, alphas, _sd15_naming())
    assert kohya["lora_unet_proj.dora_scale"].shape == (6, 1)
    assert kohya["lora_unet_conv.dora_scale"].shape == (6, 1, 1, 1)
    back, _ = kohya_to_peft(kohya, _sd15_naming())
    assert all(torch.equal(back[k], sd[k]) for k in sd)
    # The merged weight by LyCORIS/ComfyUI's rule equals PEFT's own merge.
    layer = net["proj"]
    base = layer.base_layer.weight.detach().clone()
    merged = base + kohya["lora_unet_proj.lora_up.weight"] @ kohya["lora_unet_proj.lora_down.weight"] * 1.5
    expected = merged * kohya["lora_unet_proj.dora_scale"] / merged.norm(dim=1, keepdim=True)
    layer.merge()
    torch.testing.assert_close(layer.base_layer.weight.detach(), expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    ("down", "up", "scale"),
    [((2, 8), (6, 2), (1, 8)), ((2, 8, 3, 3), (6, 2, 1, 1), (1, 8, 1, 1))],
    ids=["linear", "conv"],
)
def test_dora_scale_over_the_input_axis_reads_as_the_input_magnitude_and_back(down, up, scale) -> None:
    kohya = {
        "lora_unet_proj.lora_down.weight": torch.randn(down),
        "lora_unet_proj.lora_up.weight": torch.randn(up),
        "lora_unet_proj.dora_scale": torch.rand(scale),
        "lora_unet_proj.alpha": torch.tensor(2.0),
    }
    peft, _ = kohya_to_peft(kohya, _sd15_naming())
    assert torch.equal(peft[f"unet.proj.{INPUT_MAGNITUDE}"], kohya["lora_unet_proj.dora_scale"])
    assert "unet.proj.lora_magnitude_vector" not in peft
    back = peft_to_kohya(peft, {"unet.proj": 2.0}, _sd15_naming())
    assert back.keys() == kohya.keys()
    assert all(torch.equal(back[key], kohya[key]) for key in kohya)


def test_a_dora_scale_of_neither_axis_is_refused() -> None:
    kohya = {
        "lora_unet_proj.lora_down.weight": torch.zeros(2, 8),
        "lora_unet_proj.lora_up.weight": torch.zeros(6, 2),
        "lora_unet_proj.dora_scale": torch.zeros(1, 7),
    }
    with pytest.raises(KeyMapError, match="fits neither 6 output rows nor 8 input columns"):
        kohya_to_peft(kohya, _sd15_naming())


def _lycoris_delta(params: dict[str, torch.Tensor], shape: torch.Size) -> torch.Tensor:
    """Reference LyCORIS/ComfyUI semantics: scale alpha / rank, none for a LoKr of two full factors."""
    alpha = params["alpha"].item()
    if "hada_w1_a" in params:
        w1 = params["hada_w1_a"] @ params["hada_w1_b"]
        w2 = params["hada_w2_a"] @ params["hada_w2_b"]
        return (w1 * w2 * alpha / params["hada_w1_b"].shape[0]).reshape(shape)
    w1 = params.get("lokr_w1", params.get("lokr_w1_a", torch.empty(0)) @ params.get("lokr_w1_b", torch.empty(0)))
    w2 = params.get("lokr_w2")
    scale = 1.0
    if w2 is None:
        w2, scale = params["lokr_w2_a"] @ params["lokr_w2_b"], alpha / params["lokr_w2_b"].shape[0]
    return (torch.kron(w1, w2) * scale).reshape(shape)


@pytest.mark.parametrize(
    ("config_name", "kwargs", "fmt"),
    [
        ("LoHaConfig", {"r": 2, "alpha": 3}, "lycoris-loha"),
        ("LoKrConfig", {"r": 2, "alpha": 3}, "lycoris-lokr"),  # two full factors: PEFT's scale is baked
        ("LoKrConfig", {"r": 1, "alpha": 3, "decompose_both": True}, "lycoris-lokr"),
    ],
)
def test_lycoris_names_and_scale_match_peft(config_name: str, kwargs: dict, fmt: str) -> None:
    import peft

    net = peft.inject_adapter_in_model(getattr(peft, config_name)(target_modules=["proj"], **kwargs), _tiny_net())
    _randomise(net)
    kohya = peft_to_kohya(*peft_adapter_state(net, "unet"), _sd15_naming())
    assert detect_lora_format(kohya) == fmt
    params = {key.partition(".")[2]: value for key, value in kohya.items()}
    layer = net["proj"]
    expected = layer.get_delta_weight("default")
    torch.testing.assert_close(_lycoris_delta(params, expected.shape), expected, atol=1e-6, rtol=0)
    again = peft_to_kohya(*kohya_to_peft(kohya, _sd15_naming()), _sd15_naming())
    assert all(torch.equal(again[k], kohya[k]) for k in kohya)


@pytest.mark.parametrize(
    ("keys", "fmt"),
    [
        (["lora_unet_down_blocks_0_resnets_0_conv1.lora_down.weight", "lora_te_x.alpha"], "kohya"),
        (["lora_unet_x.hada_w1_a", "lora_unet_x.alpha"], "lycoris-loha"),
        (["lora_te1_x.lokr_w1", "lora_te1_x.lokr_w2"], "lycoris-lokr"),
        (["unet.down_blocks.0.attentions.0.proj_in.lora_A.weight"], "diffusers"),
        (["unet.down_blocks.0.attentions.0.processor.to_q_lora.lora.down.weight"], "diffusers"),
        (["text_encoder.encoder.layers.0.self_attn.q_proj.lora_B.weight"], "diffusers"),
        (["diffusion_model.input_blocks.1.1.proj_in.lora_A.weight"], "comfy"),
        (["down_blocks.0.attentions.0.proj_in.lora_A.weight"], "peft"),
        (["model.diffusion_model.input_blocks.0.0.weight"], None),
        ([], None),
    ],
)
def test_detect_lora_format(keys: list[str], fmt: str | None) -> None:
    assert detect_lora_format(keys) == fmt
