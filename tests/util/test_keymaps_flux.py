"""FLUX.1's BFL layouts: the transformer single file and kohya LoRA names, with fused q/k/v split and merged.

The merge and split rule is the one `util.keymaps.flux_lora` states: merged LoRAs compute exactly the
weights of their parts, our own merged files split back to the very tensors they were made of, and a
LoRA trained on a fused layer splits into parts that compute its weights.
"""

from __future__ import annotations

import pytest
import torch

from onetrainer.util.family import get_family
from onetrainer.util.keymaps.clip import clip_text_model_is_wrapped
from onetrainer.util.keymaps.engine import KeyMapError
from onetrainer.util.keymaps.flux_lora import LORA_NAMING, FluxKohyaNaming
from onetrainer.util.keymaps.flux_single_file import FLUX_LAYOUT, FluxLayout
from onetrainer.util.keymaps.lora import kohya_to_peft, peft_to_kohya

TE1 = "text_encoder.text_model." if clip_text_model_is_wrapped() else "text_encoder."
TINY = FluxKohyaNaming(FluxLayout(2, 2))
WIDTH, MLP = 8, 32
"""A transformer 8 wide with the 4x MLP of FLUX.1's single blocks."""


def _lora(out: int, rank: int = 2, width: int = WIDTH, seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {
        "lora_A.weight": torch.randn(rank, width, generator=generator),
        "lora_B.weight": torch.randn(out, rank, generator=generator),
    }


def _peft(modules: dict[str, dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    return {f"{module}.{param}": tensor for module, params in modules.items() for param, tensor in params.items()}


def _delta(tensors: dict[str, torch.Tensor], alphas: dict[str, float], module: str) -> torch.Tensor:
    """The weight update of one module of the neutral form: alpha / rank * B A."""
    down, up = tensors[f"{module}.lora_A.weight"], tensors[f"{module}.lora_B.weight"]
    return alphas[module] / down.shape[0] * (up @ down)


DOUBLE = "transformer.transformer_blocks.1.attn."
SINGLE = "transformer.single_transformer_blocks.0."


def _double_qkv(rank: int = 2) -> dict[str, dict[str, torch.Tensor]]:
    return {f"{DOUBLE}to_{p}": _lora(WIDTH, rank, seed=i) for i, p in enumerate("qkv")}


# ------------------------------------------------------------------------------------------- names
@pytest.mark.parametrize(
    ("module", "kohya"),
    [
        ("double_blocks.0.img_attn.qkv", "lora_unet_double_blocks_0_img_attn_qkv"),
        ("double_blocks.18.txt_mlp.2", "lora_unet_double_blocks_18_txt_mlp_2"),
        ("single_blocks.37.linear1", "lora_unet_single_blocks_37_linear1"),
        ("single_blocks.3.modulation.lin", "lora_unet_single_blocks_3_modulation_lin"),
        ("final_layer.adaLN_modulation.1", "lora_unet_final_layer_adaLN_modulation_1"),
        ("guidance_in.in_layer", "lora_unet_guidance_in_in_layer"),
    ],
)
def test_transformer_modules_get_the_bfl_names_sd_scripts_writes(module: str, kohya: str) -> None:
    assert LORA_NAMING.to_kohya(f"transformer.{module}") == kohya
    assert LORA_NAMING.from_kohya(kohya) == f"transformer.{module}"


def test_text_encoders_keep_the_transformers_paths() -> None:
    assert LORA_NAMING.to_kohya(TE1 + "encoder.layers.0.mlp.fc1") == "lora_te1_text_model_encoder_layers_0_mlp_fc1"
    t5 = "text_encoder_2.encoder.block.0.layer.1.DenseReluDense.wi_0"
    assert LORA_NAMING.to_kohya(t5) == "lora_te3_encoder_block_0_layer_1_DenseReluDense_wi_0"
    assert LORA_NAMING.from_kohya("lora_te3_encoder_block_0_layer_1_DenseReluDense_wi_0") == t5
    assert LORA_NAMING.from_kohya("lora_te1_text_model_encoder_layers_0_mlp_fc1") == TE1 + "encoder.layers.0.mlp.fc1"


def test_plain_layers_are_renamed_both_ways() -> None:
    modules = {
        "transformer.transformer_blocks.0.ff_context.net.0.proj": _lora(MLP),
        "transformer.single_transformer_blocks.1.proj_out": _lora(WIDTH, width=WIDTH + MLP),
        "transformer.time_text_embed.guidance_embedder.linear_1": _lora(WIDTH, width=4),
    }
    tensors, alphas = _peft(modules), dict.fromkeys(modules, 2.0)
    kohya = peft_to_kohya(tensors, alphas, TINY)
    assert sorted({key.partition(".")[0] for key in kohya}) == [
        "lora_unet_double_blocks_0_txt_mlp_0",
        "lora_unet_guidance_in_in_layer",
        "lora_unet_single_blocks_1_linear2",
    ]
    back, back_alphas = kohya_to_peft(kohya, TINY)
    assert back_alphas == alphas
    assert sorted(back) == sorted(tensors)
    assert all(torch.equal(back[key], tensors[key]) for key in tensors)


# ------------------------------------------------------------------------------------- qkv merge
def test_merged_qkv_is_one_lora_of_three_times_the_rank_and_alpha() -> None:
    modules = _double_qkv()
    kohya = peft_to_kohya(_peft(modules), dict.fromkeys(modules, 4.0), TINY)
    name = "lora_unet_double_blocks_1_img_attn_qkv"
    assert sorted(kohya) == [f"{name}.alpha", f"{name}.lora_down.weight", f"{name}.lora_up.weight"]
    assert kohya[f"{name}.lora_down.weight"].shape == (6, WIDTH)
    assert kohya[f"{name}.lora_up.weight"].shape == (3 * WIDTH, 6)
    assert kohya[f"{name}.alpha"].item() == 12.0


def test_merged_qkv_computes_the_weights_of_its_parts() -> None:
    modules = _double_qkv()
    tensors, alphas = _peft(modules), dict.fromkeys(modules, 4.0)
    kohya = peft_to_kohya(tensors, alphas, TINY)
    name = "lora_unet_double_blocks_1_img_attn_qkv"
    down, up = kohya[f"{name}.lora_down.weight"], kohya[f"{name}.lora_up.weight"]
    fused = kohya[f"{name}.alpha"].item() / down.shape[0] * (up @ down)
    parts = torch.cat([_delta(tensors, alphas, f"{DOUBLE}to_{p}") for p in "qkv"])
    assert torch.allclose(fused, parts, atol=1e-6)


def test_our_merged_files_split_back_to_the_same_tensors() -> None:
    modules = {**_double_qkv(), **{f"{DOUBLE}add_{p}_proj": _lora(WIDTH, seed=9 + i) for i, p in enumerate("qkv")}}
    tensors, alphas = _peft(modules), dict.fromkeys(modules, 2.0)
    back, back_alphas = kohya_to_peft(peft_to_kohya(tensors, alphas, TINY), TINY)
    assert back_alphas == alphas
    assert sorted(back) == sorted(tensors)
    assert all(torch.equal(back[key], tensors[key]) for key in tensors)


def test_a_single_block_without_its_mlp_lora_splits_back_without_one() -> None:
    """The attn preset adapts q, k, v but not `proj_mlp`, which BFL's `linear1` fuses with them (1:1:1:4):
    the MLP's block is zero and is left out again when read."""
    modules = {f"{SINGLE}attn.to_{p}": _lora(WIDTH, seed=i) for i, p in enumerate("qkv")}
    tensors, alphas = _peft(modules), dict.fromkeys(modules, 2.0)
    kohya = peft_to_kohya(tensors, alphas, TINY)
    assert kohya["lora_unet_single_blocks_0_linear1.lora_up.weight"].shape == (3 * WIDTH + MLP, 8)
    back, back_alphas = kohya_to_peft(kohya, TINY)
    assert back_alphas == alphas
    assert all(torch.equal(back[key], tensors[key]) for key in tensors)
    assert sorted(back) == sorted(tensors)


def test_an_untrained_lora_round_trips_too() -> None:
    """Up matrices start at zero, which is block-diagonal: the down blocks tell which parts are present."""
    modules = {f"{SINGLE}attn.to_{p}": _lora(WIDTH, seed=i) for i, p in enumerate("qkv")}
    modules[f"{SINGLE}proj_mlp"] = _lora(MLP, seed=7)
    for params in modules.values():
        params["lora_B.weight"].zero_()
    tensors, alphas = _peft(modules), dict.fromkeys(modules, 1.0)
    back, _ = kohya_to_peft(peft_to_kohya(tensors, alphas, TINY), TINY)
    assert sorted(back) == sorted(tensors)
    assert all(torch.equal(back[key], tensors[key]) for key in tensors)


def test_loha_merges_and_splits_exactly() -> None:
    generator = torch.Generator().manual_seed(3)

    def loha() -> dict[str, torch.Tensor]:
        shapes = {"hada_w1_a": (WIDTH, 2), "hada_w1_b": (2, WIDTH), "hada_w2_a": (WIDTH, 2), "hada_w2_b": (2, WIDTH)}
        return {name: torch.randn(shape, generator=generator) for name, shape in shapes.items()}

    modules = {f"{DOUBLE}to_{p}": loha() for p in "qkv"}
    tensors, alphas = _peft(modules), dict.fromkeys(modules, 2.0)
    kohya = peft_to_kohya(tensors, alphas, TINY)
    name = "lora_unet_double_blocks_1_img_attn_qkv"
    fused = (kohya[f"{name}.hada_w1_a"] @ kohya[f"{name}.hada_w1_b"]) * (
        kohya[f"{name}.hada_w2_a"] @ kohya[f"{name}.hada_w2_b"]
    )
    parts = torch.cat([(p["hada_w1_a"] @ p["hada_w1_b"]) * (p["hada_w2_a"] @ p["hada_w2_b"]) for p in modules.values()])
    assert torch.allclose(fused, parts, atol=1e-5)
    assert kohya[f"{name}.alpha"].item() / kohya[f"{name}.hada_w1_b"].shape[0] == 2.0 / 2
    back, back_alphas = kohya_to_peft(kohya, TINY)
    assert back_alphas == alphas
    assert all(torch.equal(back[key], tensors[key]) for key in tensors)
    assert sorted(back) == sorted(tensors)


# ------------------------------------------------------------------------------------- qkv split
def test_a_lora_trained_on_the_fused_layer_splits_into_parts_with_its_weights() -> None:
    """sd-scripts trains `linear1` itself: a dense up matrix, whose parts share the down matrix."""
    fused = _lora(3 * WIDTH + MLP, rank=4)
    kohya = {
        "lora_unet_single_blocks_1_linear1.lora_down.weight": fused["lora_A.weight"],
        "lora_unet_single_blocks_1_linear1.lora_up.weight": fused["lora_B.weight"],
        "lora_unet_single_blocks_1_linear1.alpha": torch.tensor(2.0),
    }
    tensors, alphas = kohya_to_peft(kohya, TINY)
    parts = ["attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp"]
    assert sorted(alphas) == sorted(f"transformer.single_transformer_blocks.1.{p}" for p in parts)
    whole = 2.0 / 4 * (fused["lora_B.weight"] @ fused["lora_A.weight"])
    split = torch.cat([_delta(tensors, alphas, f"transformer.single_transformer_blocks.1.{p}") for p in parts])
    assert torch.allclose(split, whole, atol=1e-6)


@pytest.mark.parametrize(
    ("kind", "params"),
    [
        ("lokr", {"lokr_w1": (2, 2), "lokr_w2": (4, 4)}),
        ("dora", {"lora_A.weight": (2, WIDTH), "lora_B.weight": (WIDTH, 2), "lora_magnitude_vector": (WIDTH,)}),
    ],
)
def test_adapters_without_an_exact_fused_form_are_refused(kind: str, params: dict[str, tuple[int, ...]]) -> None:
    modules = {f"{DOUBLE}to_{p}": {name: torch.ones(shape) for name, shape in params.items()} for p in "qkv"}
    with pytest.raises(
        KeyMapError, match=f"a {'LoKr' if kind == 'lokr' else 'DoRA'} on a layer that the original checkpoint fuses"
    ):
        peft_to_kohya(_peft(modules), dict.fromkeys(modules, 1.0), TINY)


def test_parts_of_different_ranks_are_refused() -> None:
    modules = _double_qkv()
    modules[f"{DOUBLE}to_v"] = _lora(WIDTH, rank=4)
    with pytest.raises(KeyMapError, match="different kinds, ranks or alphas"):
        peft_to_kohya(_peft(modules), dict.fromkeys(modules, 1.0), TINY)


def test_the_final_modulation_swaps_the_halves_of_its_output_rows() -> None:
    modules = {"transformer.norm_out.linear": _lora(2 * WIDTH)}
    tensors, alphas = _peft(modules), {"transformer.norm_out.linear": 2.0}
    kohya = peft_to_kohya(tensors, alphas, TINY)
    up = kohya["lora_unet_final_layer_adaLN_modulation_1.lora_up.weight"]
    assert torch.equal(up, torch.cat([tensors["transformer.norm_out.linear.lora_B.weight"][WIDTH:], up[WIDTH:]]))
    back, _ = kohya_to_peft(kohya, TINY)
    assert all(torch.equal(back[key], tensors[key]) for key in tensors)


def test_a_models_naming_follows_its_block_counts() -> None:
    configs = {"transformer": {"num_layers": 2, "num_single_layers": 2}}
    assert LORA_NAMING.for_model(configs) == TINY
    assert LORA_NAMING.for_model({}) is LORA_NAMING
    with pytest.raises(KeyMapError, match=r"not a module of this FLUX\.1 transformer"):
        kohya_to_peft({"lora_unet_double_blocks_5_img_mlp_0.lora_down.weight": torch.ones(1, 1)}, TINY)


# ------------------------------------------------------------------------------------- single file
def _transformer_state(layout: FluxLayout, width: int = WIDTH, columns: int = 3) -> dict[str, torch.Tensor]:
    """A diffusers Flux transformer state dict of `layout`'s blocks (every linear layer with its bias, the RMS
    norms) with distinct values; `columns` (every layer's input width) keeps it small."""
    generator = torch.Generator().manual_seed(0)
    mlp = 4 * width
    linears = {"x_embedder": width, "context_embedder": width, "proj_out": columns, "norm_out.linear": 2 * width}
    for embedder in ("timestep_embedder", "text_embedder", "guidance_embedder"):
        linears |= {f"time_text_embed.{embedder}.linear_{n}": width for n in (1, 2)}
    norms: list[str] = []
    for i in range(layout.double_blocks):
        block = f"transformer_blocks.{i}."
        for layer in ("to_q", "to_k", "to_v", "add_q_proj", "add_k_proj", "add_v_proj", "to_out.0", "to_add_out"):
            linears[f"{block}attn.{layer}"] = width
        linears |= {f"{block}{n}.linear": 6 * width for n in ("norm1", "norm1_context")}
        linears |= {f"{block}{ff}.net.0.proj": mlp for ff in ("ff", "ff_context")}
        linears |= {f"{block}{ff}.net.2": width for ff in ("ff", "ff_context")}
        norms += [f"{block}attn.{n}" for n in ("norm_q", "norm_k", "norm_added_q", "norm_added_k")]
    for i in range(layout.single_blocks):
        block = f"single_transformer_blocks.{i}."
        linears |= {f"{block}attn.to_{p}": width for p in "qkv"}
        linears |= {f"{block}proj_mlp": mlp, f"{block}norm.linear": 3 * width, f"{block}proj_out": width}
        norms += [f"{block}attn.norm_{n}" for n in "qk"]
    state = {}
    for layer, out in linears.items():
        state[f"{layer}.weight"] = torch.randn(out, columns, generator=generator)
        state[f"{layer}.bias"] = torch.randn(out, generator=generator)
    state |= {f"{norm}.weight": torch.randn(4, generator=generator) for norm in norms}
    return state


def _write(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    prefixed = {f"transformer.{key}": tensor for key, tensor in state.items()}
    return FLUX_LAYOUT.writer(prefixed).convert(prefixed)


def test_the_single_file_round_trips_exactly() -> None:
    state = _transformer_state(FluxLayout(2, 2))
    bfl = _write(state)
    assert "double_blocks.1.img_attn.qkv.weight" in bfl
    assert "single_blocks.1.linear1.bias" in bfl
    assert bfl["single_blocks.0.linear1.weight"].shape[0] == 7 * WIDTH
    back = FLUX_LAYOUT.reader(bfl).convert(bfl)
    assert sorted(back) == sorted(f"transformer.{key}" for key in state)
    assert all(torch.equal(back[f"transformer.{key}"], tensor) for key, tensor in state.items())


def test_comfyui_checkpoints_read_every_part_they_hold() -> None:
    from onetrainer.util.keymaps.clip import clip_text_model_is_wrapped

    bfl = _write(_transformer_state(FluxLayout(1, 1)))
    comfy = {f"model.diffusion_model.{key}": tensor for key, tensor in bfl.items()}
    clip = "text_encoders.clip_l.transformer."
    comfy[clip + "text_model.final_layer_norm.weight"] = torch.ones(2)
    comfy[clip + "text_projection.weight"] = torch.eye(2)
    comfy["text_encoders.clip_l.logit_scale"] = torch.tensor(1.0)
    comfy["text_encoders.t5xxl.transformer.shared.weight"] = torch.ones(3, 2)
    comfy["vae.decoder.conv_in.weight"] = torch.ones(2)
    comfy["vae.encoder.down.0.block.1.nin_shortcut.weight"] = torch.ones(2)
    back = FLUX_LAYOUT.reader(comfy).convert(comfy)
    plain = FLUX_LAYOUT.reader(bfl).convert(bfl)
    assert all(torch.equal(back[key], plain[key]) for key in plain)
    te = "text_encoder.text_model." if clip_text_model_is_wrapped() else "text_encoder."
    assert sorted(set(back) - set(plain)) == sorted(
        [
            te + "final_layer_norm.weight",
            "text_encoder_2.shared.weight",
            "vae.decoder.conv_in.weight",
            "vae.encoder.down_blocks.0.resnets.1.conv_shortcut.weight",
        ]
    )


def test_diffusers_from_single_file_converter_reads_our_file_at_the_released_width() -> None:
    """diffusers' converter (what `FluxTransformer2DModel.from_single_file` runs) splits `linear1` at the
    released width, 3072; our file of a transformer that wide, thin in its input columns, converts back to
    exactly our tensors."""
    from diffusers.loaders.single_file_model import SINGLE_FILE_LOADABLE_CLASSES

    convert = SINGLE_FILE_LOADABLE_CLASSES["FluxTransformer2DModel"]["checkpoint_mapping_fn"]
    state = _transformer_state(FluxLayout(1, 1), width=3072, columns=1)
    theirs = convert(_write(state))
    assert sorted(theirs) == sorted(state)
    assert all(torch.equal(theirs[key], tensor) for key, tensor in state.items())


def test_bfl_files_are_recognised_as_dev_or_schnell() -> None:
    from onetrainer.util.family import recognise

    shapes = {key: tuple(t.shape) for key, t in _write(_transformer_state(FluxLayout(1, 1))).items()}
    shapes["img_in.weight"] = (WIDTH, 64)
    assert recognise("single_file", shapes).family == "flux-dev"
    schnell = {key: shape for key, shape in shapes.items() if not key.startswith("guidance_in.")}
    assert recognise("single_file", schnell).family == "flux-schnell"
    comfy = {f"model.diffusion_model.{key}": shape for key, shape in schnell.items()}
    assert recognise("single_file", comfy).family == "flux-schnell"
    fill = {**shapes, "img_in.weight": (3072, 384)}
    assert recognise("single_file", fill) is None
    assert get_family("flux-dev").single_file is FLUX_LAYOUT
