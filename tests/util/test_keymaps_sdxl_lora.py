"""SDXL's kohya LoRA names: the SGM module names sd-scripts writes, and ComfyUI's rules for finding them."""

from __future__ import annotations

import pytest
import torch

from onetrainer.model.adapters.lora import LoraTargets, inject_lora
from onetrainer.model.diffusion import DiffusionModel
from onetrainer.model_saver.adapter_files import lora_from_model
from onetrainer.util.family import get_family
from onetrainer.util.keymaps.clip import clip_text_model_is_wrapped
from onetrainer.util.keymaps.engine import KeyMapError
from onetrainer.util.keymaps.lora import kohya_to_peft, peft_to_kohya
from onetrainer.util.keymaps.sdxl_lora import LORA_NAMING, unet_layout
from onetrainer.util.keymaps.sdxl_single_file import SDXL_LAYOUT
from onetrainer.util.tiny.models import build_tiny_sdxl_pipeline

SDXL = get_family("sdxl")
TE1 = "text_encoder.text_model." if clip_text_model_is_wrapped() else "text_encoder."


@pytest.mark.parametrize(
    ("module", "kohya"),
    [
        (
            "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q",
            "input_blocks_4_1_transformer_blocks_0_attn1_to_q",
        ),
        (
            "unet.down_blocks.2.attentions.1.transformer_blocks.9.ff.net.0.proj",
            "input_blocks_8_1_transformer_blocks_9_ff_net_0_proj",
        ),
        ("unet.down_blocks.0.resnets.0.conv1", "input_blocks_1_0_in_layers_2"),
        ("unet.down_blocks.0.resnets.1.time_emb_proj", "input_blocks_2_0_emb_layers_1"),
        ("unet.down_blocks.1.resnets.0.conv_shortcut", "input_blocks_4_0_skip_connection"),
        ("unet.down_blocks.0.downsamplers.0.conv", "input_blocks_3_0_op"),
        ("unet.mid_block.attentions.0.proj_in", "middle_block_1_proj_in"),
        ("unet.mid_block.resnets.1.conv2", "middle_block_2_out_layers_3"),
        ("unet.up_blocks.0.upsamplers.0.conv", "output_blocks_2_2_conv"),
        ("unet.up_blocks.1.attentions.2.proj_out", "output_blocks_5_1_proj_out"),
        ("unet.up_blocks.2.resnets.2.conv2", "output_blocks_8_0_out_layers_3"),
        ("unet.add_embedding.linear_1", "label_emb_0_0"),
        ("unet.time_embedding.linear_2", "time_embed_2"),
        ("unet.conv_in", "input_blocks_0_0"),
    ],
)
def test_unet_modules_get_the_sgm_names_sd_scripts_writes(module: str, kohya: str) -> None:
    assert LORA_NAMING.to_kohya(module) == f"lora_unet_{kohya}"
    assert LORA_NAMING.from_kohya(f"lora_unet_{kohya}") == module


def test_text_encoders_keep_the_transformers_paths_with_text_model() -> None:
    assert LORA_NAMING.to_kohya(TE1 + "encoder.layers.0.mlp.fc1") == "lora_te1_text_model_encoder_layers_0_mlp_fc1"
    te2 = "text_encoder_2.text_model.encoder.layers.31.self_attn.out_proj"
    assert LORA_NAMING.to_kohya(te2) == "lora_te2_text_model_encoder_layers_31_self_attn_out_proj"
    assert LORA_NAMING.from_kohya("lora_te1_text_model_encoder_layers_0_mlp_fc1") == TE1 + "encoder.layers.0.mlp.fc1"
    assert LORA_NAMING.from_kohya("lora_te2_text_model_encoder_layers_31_self_attn_out_proj") == te2


def test_names_follow_the_models_block_counts() -> None:
    """The tiny UNet has one layer per block, so its first attention is input block 3, not 4."""
    tiny = LORA_NAMING.for_model({"unet": dict(build_tiny_sdxl_pipeline().unet.config)})
    module = "unet.down_blocks.1.attentions.0.transformer_blocks.1.attn2.to_k"
    assert tiny.to_kohya(module) == "lora_unet_input_blocks_3_1_transformer_blocks_1_attn2_to_k"
    assert tiny.from_kohya("lora_unet_output_blocks_1_2_conv") == "unet.up_blocks.0.upsamplers.0.conv"
    assert LORA_NAMING.for_model({}) is LORA_NAMING


def test_every_tiny_unet_layer_round_trips() -> None:
    unet = build_tiny_sdxl_pipeline().unet
    naming = LORA_NAMING.for_model({"unet": dict(unet.config)})
    leaves = [name for name, child in unet.named_modules() if name and not list(child.children())]
    weighted = [name for name in leaves if getattr(unet.get_submodule(name), "weight", None) is not None]
    assert {naming.from_kohya(naming.to_kohya(f"unet.{name}")) for name in weighted} == {f"unet.{n}" for n in weighted}


def test_unknown_modules_are_refused() -> None:
    with pytest.raises(KeyMapError):
        LORA_NAMING.from_kohya("lora_unet_input_blocks_99_1_proj_in")


def test_layouts_read_from_configs() -> None:
    layout = unet_layout(dict(build_tiny_sdxl_pipeline().unet.config))
    assert (layout.unet_blocks, layout.unet_layers, layout.unet_up_attention) == (2, 1, frozenset({0}))


@pytest.fixture(scope="module")
def kohya_lora() -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(the kohya LoRA of the tiny SDXL over every layer LoRA presets reach, the model's SGM single file)."""
    pipe = build_tiny_sdxl_pipeline()
    model = DiffusionModel.from_pipeline(pipe, SDXL, source="tiny:sdxl")
    targets = {
        "unet": LoraTargets("full", presets=SDXL.component("unet").lora_presets),
        "text_encoder": LoraTargets("attn-mlp", presets=SDXL.component("text_encoder").lora_presets),
        "text_encoder_2": LoraTargets("attn-mlp", presets=SDXL.component("text_encoder_2").lora_presets),
    }
    single = SDXL_LAYOUT.writer(_state(pipe)).convert(_state(pipe))
    model.adapters.lora = inject_lora(model, kind="lora", rank=2, alpha=2.0, targets=targets)
    tensors, alphas, _ = lora_from_model(model)
    return peft_to_kohya(tensors, alphas, LORA_NAMING.for_model(model.component_configs())), single


def _state(pipe: object) -> dict[str, torch.Tensor]:
    names = ("unet", "vae", "text_encoder", "text_encoder_2")
    return {f"{name}.{key}": value for name in names for key, value in getattr(pipe, name).state_dict().items()}


# ComfyUI's rules, re-implemented from comfy/lora.py (comfyanonymous/ComfyUI):
# - model_lora_keys_unet: for every key "diffusion_model.<path>.weight" of the (SGM) UNet's state dict,
#   key_map["lora_unet_" + <path> with "." -> "_"] = that key. (It also maps diffusers names through
#   comfy/utils.py unet_to_diffusers; sd-scripts' SDXL names, and ours, are the SGM ones.)
# - model_lora_keys_clip: for each layer b and each of LORA_CLIP_MAP's modules c, where
#   "clip_l.transformer.text_model.encoder.layers.{b}.{c}.weight" exists, key_map gets
#   "lora_te1_text_model_encoder_layers_{b}_{LORA_CLIP_MAP[c]}"; where the clip_g one exists (and clip_l
#   is present: SDXL base), "lora_te2_text_model_encoder_layers_{b}_...". ComfyUI's clip_l / clip_g are
#   the checkpoint's conditioner.embedders.0.transformer / embedders.1.model converted to transformers names.
LORA_CLIP_MAP = {
    "mlp.fc1": "mlp_fc1",
    "mlp.fc2": "mlp_fc2",
    "self_attn.k_proj": "self_attn_k_proj",
    "self_attn.q_proj": "self_attn_q_proj",
    "self_attn.v_proj": "self_attn_v_proj",
    "self_attn.out_proj": "self_attn_out_proj",
}


def _comfy_key_map(single: dict[str, torch.Tensor]) -> set[str]:
    keys: set[str] = set()
    for key in single:
        if key.startswith("model.diffusion_model.") and key.endswith(".weight"):
            path = key.removeprefix("model.diffusion_model.").removesuffix(".weight")
            keys.add("lora_unet_" + path.replace(".", "_"))
    clip_l = "conditioner.embedders.0.transformer.text_model.encoder.layers.{}.{}.weight"
    clip_g = "conditioner.embedders.1.model.transformer.resblocks.{}."
    for b in range(32):
        for c, name in LORA_CLIP_MAP.items():
            if clip_l.format(b, c) in single:
                keys.add(f"lora_te1_text_model_encoder_layers_{b}_{name}")
            if any(key.startswith(clip_g.format(b)) for key in single):
                keys.add(f"lora_te2_text_model_encoder_layers_{b}_{name}")
    return keys


def test_every_module_we_write_is_found_by_comfyui(
    kohya_lora: tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]],
) -> None:
    lora, single = kohya_lora
    modules = {key.partition(".")[0] for key in lora}
    assert {name.split("_")[1] for name in modules} == {"unet", "te1", "te2"}
    assert any("_in_layers_2" in name for name in modules), "resnets are targeted"
    assert any(name.endswith("_op") for name in modules), "downsamplers are targeted"
    assert modules <= _comfy_key_map(single), sorted(modules - _comfy_key_map(single))[:5]


def test_kohya_file_reads_back_to_the_same_adapter(
    kohya_lora: tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]],
) -> None:
    lora, _ = kohya_lora
    naming = LORA_NAMING.for_model({"unet": dict(build_tiny_sdxl_pipeline().unet.config)})
    tensors, _ = kohya_to_peft(lora, naming)
    assert peft_to_kohya(tensors, None, naming).keys() == lora.keys()


@pytest.mark.parametrize("kind", ["dora", "loha", "lokr"])
def test_lycoris_and_dora_adapters_take_the_same_names(kind: str) -> None:
    pipe = build_tiny_sdxl_pipeline()
    model = DiffusionModel.from_pipeline(pipe, SDXL, source="tiny:sdxl")
    targets = {
        name: LoraTargets("attn", presets=SDXL.component(name).lora_presets) for name in ("unet", "text_encoder_2")
    }
    model.adapters.lora = inject_lora(model, kind=kind, rank=2, alpha=1.0, targets=targets)
    tensors, alphas, _ = lora_from_model(model)
    naming = LORA_NAMING.for_model(model.component_configs())
    kohya = peft_to_kohya(tensors, alphas, naming)
    assert all(
        key.startswith(
            ("lora_unet_input_blocks_3_1_", "lora_unet_output_blocks_", "lora_unet_middle_block_1_", "lora_te2_")
        )
        for key in kohya
    )
    back, back_alphas = kohya_to_peft(kohya, naming)
    assert back.keys() == tensors.keys()
    assert all(torch.equal(back[key], tensors[key].reshape(back[key].shape)) for key in tensors)
    assert back_alphas == pytest.approx(alphas)
