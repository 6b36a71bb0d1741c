"""SD 3 / 3.5 layouts: the LoRA keys ComfyUI maps, kohya <-> peft, the checkpoint layout, recognition, modelspec.

ComfyUI's rules for an SD 3 LoRA (comfy/lora.py `model_lora_keys_unet` / `model_lora_keys_clip` and
comfy/utils.py `mmdit_to_diffusers`), restated by `comfy_key_map` below, LoRA module -> ComfyUI weight:
- `transformer.<p>` and `lora_transformer_<p with "_">` -> `diffusion_model.` + the MMDiT key of diffusers' <p>:
  - `transformer_blocks.N.attn.to_q / to_k / to_v` -> rows [0, w), [w, 2w), [2w, 3w) of
    `joint_blocks.N.x_block.attn.qkv`; `attn.add_q_proj / add_k_proj / add_v_proj` -> the same rows of
    `context_block.attn.qkv`; MMDiT-X's `attn2.to_q / to_k / to_v` -> those of `x_block.attn2.qkv`;
  - `attn.to_out.0` -> `x_block.attn.proj`, `attn.to_add_out` -> `context_block.attn.proj`,
    `attn2.to_out.0` -> `x_block.attn2.proj`;
  - `ff.net.0.proj` / `ff.net.2` -> `x_block.mlp.fc1` / `fc2` (`ff_context.` -> `context_block.mlp.`);
  - `norm1.linear` -> `x_block.adaLN_modulation.1`, `norm1_context.linear` -> `context_block.adaLN_modulation.1`;
- `lora_te1_text_model_encoder_layers_N_<l>` and `text_encoder.text_model.encoder.layers.N.<l>` ->
  `clip_l.transformer.text_model.encoder.layers.N.<l>` (l: self_attn q/k/v/out_proj, mlp fc1/fc2);
  `lora_te2_` and `text_encoder_2.` likewise -> `clip_g.transformer.`;
- `lora_te3_<T5 path with "_">` -> `t5xxl.transformer.<T5 path>` (ComfyUI maps no peft T5 names).
w is the MMDiT's width (ComfyUI: depth * 64, which the released models are). ComfyUI's model weights are
those of the checkpoint we write (`model.diffusion_model.` and `text_encoders.` dropped), which diffusers'
`from_single_file` reads into exactly our tensors (`tests/model_sampler/test_sd3_interop.py`).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from onetrainer.model.adapters.lora_file import read_lora_file
from onetrainer.model.diffusion import DiffusionModel
from onetrainer.model_loader.pipeline import load_model
from onetrainer.model_saver.adapter_files import lora_from_model
from onetrainer.util.detect import detect_weights, family_from_metadata
from onetrainer.util.enums import TrainingMethod
from onetrainer.util.family import get_family, recognise
from onetrainer.util.keymaps.lora import kohya_to_peft, peft_to_kohya
from onetrainer.util.keymaps.sd3_lora import LORA_NAMING
from onetrainer.util.keymaps.sd3_single_file import SD3_LAYOUT
from onetrainer.util.registry import ModuleKind, lookup
from onetrainer.util.safetensors_meta import modelspec_architecture

KINDS = ("sd35-large", "sd35-medium", "sd3-medium")
KINDS_BY_NAME = ("sd3-medium", "sd35-large", "sd35-medium")
BLOCK = {
    "attn.to_out.0": "x_block.attn.proj", "attn.to_add_out": "context_block.attn.proj",
    "attn2.to_out.0": "x_block.attn2.proj",
    "ff.net.0.proj": "x_block.mlp.fc1", "ff.net.2": "x_block.mlp.fc2",
    "ff_context.net.0.proj": "context_block.mlp.fc1", "ff_context.net.2": "context_block.mlp.fc2",
    "norm1.linear": "x_block.adaLN_modulation.1", "norm1_context.linear": "context_block.adaLN_modulation.1",
}  # fmt: skip
"""ComfyUI's MMDIT_MAP_BLOCK (weights): diffusers' block layer -> the MMDiT block layer."""
FUSED = {
    "attn.to_": ("x_block.attn.qkv", "{}"),
    "attn.add_": ("context_block.attn.qkv", "{}_proj"),
    "attn2.to_": ("x_block.attn2.qkv", "{}"),
}
"""diffusers' q, k, v layers (prefix, suffix around "q", "k", "v") -> the fused MMDiT layer."""
CLIP_LAYERS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj", "mlp.fc1", "mlp.fc2")

Target = tuple[str, int, int]
"""(ComfyUI weight key, first output row, rows) of one LoRA module; rows -1 for the whole weight."""


def comfy_key_map(blocks: int, width: int, comfy_keys: set[str]) -> dict[str, Target]:
    """The LoRA module names ComfyUI maps for an SD 3 model, as its rules above build them."""
    diffusers: dict[str, Target] = {}
    for n in range(blocks):
        block, joint = f"transformer_blocks.{n}.", f"diffusion_model.joint_blocks.{n}."
        for prefix, (fused, suffix) in FUSED.items():
            for i, part in enumerate("qkv"):
                diffusers[block + prefix + suffix.format(part)] = (joint + fused + ".weight", i * width, width)
        for layer, mmdit in BLOCK.items():
            diffusers[block + layer] = (joint + mmdit + ".weight", 0, -1)
    key_map: dict[str, Target] = {}
    for path, target in diffusers.items():
        key_map[f"transformer.{path}"] = key_map["lora_transformer_" + path.replace(".", "_")] = target
    for n in range(64):
        for layer in CLIP_LAYERS:
            for encoder, te, clip in (("text_encoder", "te1", "clip_l"), ("text_encoder_2", "te2", "clip_g")):
                key = f"{clip}.transformer.text_model.encoder.layers.{n}.{layer}.weight"
                if key in comfy_keys:
                    target = (key, 0, -1)
                    key_map[f"lora_{te}_text_model_encoder_layers_{n}_{layer.replace('.', '_')}"] = target
                    key_map[f"{encoder}.text_model.encoder.layers.{n}.{layer}"] = target
    for key in comfy_keys:
        if key.startswith("t5xxl.transformer.") and key.endswith(".weight"):
            path = key.removeprefix("t5xxl.transformer.").removesuffix(".weight")
            key_map["lora_te3_" + path.replace(".", "_")] = (key, 0, -1)
    return key_map


def _save(model: DiffusionModel, path: Path, **kwargs: Any) -> Path:
    saver = lookup(ModuleKind.SAVER, model.spec.name)()
    method = kwargs.pop("method", TrainingMethod.LORA)
    return saver.save(model, path, method=method, dtype="fp32", **kwargs)[0]


@pytest.fixture(scope="module", params=KINDS)
def saved(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, with_random_lora: Callable[..., Any]
) -> dict[str, Any]:
    """A LoRA'd tiny model (every layer the presets reach, in all four components), its kohya and peft files, and
    the ComfyUI weights of its checkpoint."""
    parts = ("transformer", "text_encoder", "text_encoder_2", "text_encoder_3")
    model = with_random_lora(load_model(f"tiny:{request.param}"), parts, preset="full", rank=2, alpha=1.0, scale=0.1)
    folder = tmp_path_factory.mktemp(request.param)
    base = load_model(f"tiny:{request.param}")
    checkpoint = load_file(_save(base, folder / "model.safetensors", method=TrainingMethod.FULL))
    comfy = {
        key.removeprefix("model.").removeprefix("text_encoders."): tuple(tensor.shape)
        for key, tensor in checkpoint.items()
    }
    return {
        "model": model,
        "kohya": _save(model, folder / "kohya.safetensors", format="kohya"),
        "peft": _save(model, folder / "peft.safetensors", format="peft"),
        "comfy": comfy,
    }


def _modules(tensors: dict[str, torch.Tensor]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """LoRA module -> (down, up), in either layout."""
    found = {}
    for key, tensor in tensors.items():
        for down, up in ((".lora_down.weight", ".lora_up.weight"), (".lora_A.weight", ".lora_B.weight")):
            if key.endswith(down):
                module = key.removesuffix(down)
                found[module] = (tensor, tensors[module + up])
    return found


@pytest.mark.parametrize("fmt", ["kohya", "peft"])
def test_comfyui_maps_every_lora_module_onto_a_weight_of_its_shape(saved: dict[str, Any], fmt: str) -> None:
    model, comfy = saved["model"], saved["comfy"]
    width = int(model.transformer.config.num_attention_heads * model.transformer.config.attention_head_dim)
    key_map = comfy_key_map(len(model.transformer.transformer_blocks), width, set(comfy))
    modules = _modules(load_file(saved[fmt]))
    assert len(modules) == len(lora_from_model(model)[1])
    unmapped = sorted(module for module in modules if module not in key_map)
    if fmt == "peft":
        # ComfyUI reads T5 LoRAs under their kohya names only (and diffusers reads none): peft's are left out
        assert unmapped
        assert all(module.startswith("text_encoder_3.") for module in unmapped)
        modules = {module: tensors for module, tensors in modules.items() if module not in unmapped}
    else:
        assert unmapped == [], f"modules ComfyUI does not load: {unmapped[:4]}"
    slices: dict[str, set[int]] = {}
    for module, (down, up) in modules.items():
        key, first, rows = key_map[module]
        out, columns = comfy[key]
        assert down.shape[1] == columns, module
        assert up.shape[0] == (out if rows < 0 else rows), module
        assert first + up.shape[0] <= out, module
        if rows >= 0:
            slices.setdefault(key, set()).add(first)
    assert slices, "the fused q, k, v layers are adapted"
    assert all(starts == {0, width, 2 * width} for starts in slices.values()), "q, k, v take their own rows"
    assert any("attn2" in key for key in slices) == (model.spec.name == "sd35-medium")
    prefixes = {module.split("_")[1] if fmt == "kohya" else module.partition(".")[0] for module in modules}
    expected = (
        {"transformer", "te1", "te2", "te3"} if fmt == "kohya" else {"transformer", "text_encoder", "text_encoder_2"}
    )
    assert prefixes == expected


def test_the_kohya_file_reads_back_to_the_models_tensors(saved: dict[str, Any], lora_deltas: Callable) -> None:
    model = saved["model"]
    tensors, alphas, _ = lora_from_model(model)
    loaded = read_lora_file(saved["kohya"], model.spec)
    assert sorted(loaded.tensors) == sorted(tensors)
    assert all(torch.equal(loaded.tensors[key], tensor) for key, tensor in tensors.items())
    assert loaded.alphas == alphas
    loaded = read_lora_file(saved["peft"], model.spec)  # each scale in the up factor (alpha = rank)
    assert sorted(loaded.tensors) == sorted(tensors)
    ours, theirs = lora_deltas(tensors, alphas), lora_deltas(loaded.tensors, loaded.alphas)
    assert all(torch.allclose(theirs[module], delta, rtol=1e-6, atol=0) for module, delta in ours.items())


@pytest.mark.parametrize(
    ("module", "kohya"),
    [
        ("transformer.transformer_blocks.0.attn.to_q", "lora_transformer_transformer_blocks_0_attn_to_q"),
        ("transformer.transformer_blocks.12.attn.add_k_proj", "lora_transformer_transformer_blocks_12_attn_add_k_proj"),
        ("transformer.transformer_blocks.3.attn2.to_out.0", "lora_transformer_transformer_blocks_3_attn2_to_out_0"),
        ("transformer.transformer_blocks.3.ff_context.net.0.proj",
         "lora_transformer_transformer_blocks_3_ff_context_net_0_proj"),
        ("transformer.transformer_blocks.37.norm1_context.linear",
         "lora_transformer_transformer_blocks_37_norm1_context_linear"),
        ("text_encoder_2.text_model.encoder.layers.31.mlp.fc2", "lora_te2_text_model_encoder_layers_31_mlp_fc2"),
        ("text_encoder_3.encoder.block.23.layer.1.DenseReluDense.wi_0",
         "lora_te3_encoder_block_23_layer_1_DenseReluDense_wi_0"),
    ],
)  # fmt: skip
def test_kohya_names_are_the_diffusers_paths_both_ways(module: str, kohya: str) -> None:
    assert LORA_NAMING.to_kohya(module) == kohya
    assert LORA_NAMING.from_kohya(kohya) == module


def test_kohya_and_peft_convert_both_ways_exactly() -> None:
    generator = torch.Generator().manual_seed(1)
    modules = [
        "transformer.transformer_blocks.1.attn.add_v_proj",
        "transformer.transformer_blocks.0.attn2.to_k",
        "transformer.transformer_blocks.1.norm1_context.linear",
        "text_encoder.text_model.encoder.layers.0.self_attn.out_proj",
        "text_encoder_3.encoder.block.1.layer.0.SelfAttention.o",
    ]
    tensors = {}
    for module in modules:
        tensors[f"{module}.lora_A.weight"] = torch.randn(2, 8, generator=generator)
        tensors[f"{module}.lora_B.weight"] = torch.randn(8, 2, generator=generator)
    alphas = {module: float(i + 1) for i, module in enumerate(modules)}
    kohya = peft_to_kohya(tensors, alphas, LORA_NAMING)
    assert "lora_transformer_transformer_blocks_1_norm1_context_linear.lora_up.weight" in kohya
    assert kohya["lora_te3_encoder_block_1_layer_0_SelfAttention_o.alpha"].item() == 5.0
    back, back_alphas = kohya_to_peft(kohya, LORA_NAMING)
    assert back_alphas == alphas
    assert sorted(back) == sorted(tensors)
    assert all(torch.equal(back[key], tensor) for key, tensor in tensors.items())


@pytest.mark.parametrize("kind", KINDS)
def test_the_checkpoint_round_trips_and_is_recognised(kind: str) -> None:
    model = load_model(f"tiny:{kind}")
    state = {f"{name}.{key}": t for name, module in model.modules() for key, t in module.state_dict().items()}
    original = SD3_LAYOUT.writer(state).convert(state)
    assert "model.diffusion_model.joint_blocks.1.x_block.attn.qkv.weight" in original
    assert "first_stage_model.decoder.conv_in.weight" in original
    assert "text_encoders.t5xxl.transformer.shared.weight" in original
    back = SD3_LAYOUT.reader(original).convert(original)
    embed = "text_encoder_3.encoder.embed_tokens.weight"
    assert sorted(set(back) - {embed}) == sorted(set(state) - {embed})
    assert all(torch.equal(back[key], tensor) for key, tensor in state.items() if key in back)
    shapes = {key: tuple(t.shape) for key, t in original.items()}
    assert recognise("single_file", shapes).family == kind
    bare = {key.removeprefix("model.diffusion_model."): s for key, s in shapes.items() if "diffusion_model" in key}
    assert recognise("single_file", bare).family == kind, "a bare MMDiT is recognised too"


def test_loras_are_recognised_by_their_blocks_and_widths() -> None:
    medium = {"transformer.transformer_blocks.0.attn2.to_q.lora_A.weight": (4, 1536)}
    assert recognise("lora", medium).family == "sd35-medium"
    large = {"lora_transformer_transformer_blocks_0_attn_to_q.lora_down.weight": (4, 2432)}
    assert recognise("lora", large).family == "sd35-large"
    for key in (
        "lora_transformer_transformer_blocks_1_attn_to_q.lora_down.weight",
        "transformer.transformer_blocks.1.attn.to_q.lora_A.weight",
    ):
        joint = recognise("lora", {key: (4, 1536)})  # not SDXL's UNet blocks, deeper than one transformer block
        assert joint.family is None
        # FLUX.1's LoRAs of joint blocks alone have these names too: every family that claims the file is named
        assert set(joint.candidates) == {"sd3-medium", "sd35-medium", "flux-dev", "flux-schnell"}
    with_t5 = {"lora_te2_text_model_encoder_layers_0_mlp_fc1.lora_down.weight": (4, 1280)}
    with_t5["lora_te3_encoder_block_0_layer_0_SelfAttention_q.lora_down.weight"] = (4, 4096)
    assert recognise("lora", with_t5).candidates == ("sd3-medium", "sd35-large", "sd35-medium"), "not SDXL's te1 / te2"
    flux = recognise("lora", {"transformer.transformer_blocks.0.attn.to_q.lora_A.weight": (4, 3072)})
    assert flux.candidates == ("flux-dev", "flux-schnell"), "no SD 3 is 3072 wide"


@pytest.mark.parametrize(
    ("kind", "adapter", "expected"),
    [
        ("sd35-large", None, "stable-diffusion-v3.5-large"),
        ("sd35-large", "lora", "stable-diffusion-v3.5-large/lora"),
        ("sd35-medium", None, "stable-diffusion-v3.5-medium"),
        ("sd35-medium", "embedding", "stable-diffusion-v3.5-medium/textual-inversion"),
        ("sd3-medium", "lora", "stable-diffusion-v3-medium/lora"),
    ],
)
def test_modelspec_architectures(kind: str, adapter: str | None, expected: str) -> None:
    assert modelspec_architecture(get_family(kind), adapter=adapter) == expected


def test_auto_saves_a_lora_that_trains_t5_as_kohya_and_nothing_else_changes() -> None:
    """ComfyUI reads SD 3's and FLUX.1's T5 LoRAs only as `lora_te3_` and diffusers not at all, and a UNet's
    attention only from kohya names: of every family's parts only those are read whole as kohya alone, and only
    SD 3's T5 (a family whose default is peft) turns `saving.format: auto` to kohya, only while it trains."""
    from onetrainer.util.family import families

    t5 = {**dict.fromkeys(KINDS, "text_encoder_3"), "flux-dev": "text_encoder_2", "flux-schnell": "text_encoder_2"}
    unets = dict.fromkeys(("sd15", "sd2", "sdxl"), "unet")
    for spec in families():
        trainable = [c.name for c in spec.components if c.trainable]
        kohya_only = [c.name for c in spec.kohya_only(trainable)]
        expected = t5.get(spec.name) or unets.get(spec.name)
        assert kohya_only == ([expected] if expected else []), spec.name
        assert spec.auto_lora_format_for([n for n in trainable if n not in kohya_only]) == spec.auto_lora_format
    for kind in KINDS:
        spec = get_family(kind)
        assert spec.auto_lora_format_for(["transformer", "text_encoder", "text_encoder_2"]) == "peft"
        assert spec.auto_lora_format_for(["transformer", "text_encoder_3"]) == "kohya"
        assert spec.peft_warnings(["transformer", "text_encoder"], "saving.format: peft") == []
        (warning,) = spec.peft_warnings(["transformer", "text_encoder_3"], "saving.format: peft")
        assert warning.startswith("saving.format: peft: the T5-XXL text encoder's LoRA")


@pytest.mark.parametrize(
    ("architecture", "family", "candidates"),
    [
        ("stable-diffusion-v3.5-large/lora", "sd35-large", ()),
        ("stable-diffusion-3-5-large/lora", "sd35-large", ()),
        ("stable-diffusion-3-medium", "sd3-medium", ()),
        ("stable-diffusion-v3.5/embedding", None, ("sd35-large", "sd35-medium")),
        ("stable-diffusion-3/lora", None, KINDS_BY_NAME),
        ("stable-diffusion-xl-v1-base/lora", "sdxl", ()),
    ],
)
def test_other_trainers_architecture_values_name_sd3(
    architecture: str, family: str | None, candidates: tuple[str, ...]
) -> None:
    """sd-scripts writes "stable-diffusion-3-" + its model type, OneTrainer one value for both 3.5 sizes."""
    said = family_from_metadata({"modelspec.architecture": architecture})
    assert (said.family, said.candidates) == (family, candidates)


def test_keys_pick_among_the_candidates_the_metadata_names() -> None:
    lora = {
        "transformer.transformer_blocks.0.attn2.to_q.lora_A.weight": (2, 64),
        "transformer.transformer_blocks.0.attn2.to_q.lora_B.weight": (64, 2),
    }
    detection = detect_weights(lora, {"modelspec.architecture": "stable-diffusion-v3.5/lora"})
    assert detection.family == "sd35-medium"
    assert detection.reason.startswith("header metadata and MMDiT-X")
    clip = {"clip_l": (2, 32), "clip_g": (2, 48)}
    detection = detect_weights(clip, {"modelspec.architecture": "stable-diffusion-v3.5/embedding"})
    assert (detection.family, detection.candidates) == (None, ("sd35-large", "sd35-medium")), "SDXL's keys, not SDXL"


@pytest.mark.parametrize("fmt", ["kohya", "peft"])
def test_saved_files_name_the_architecture_in_their_metadata(saved: dict[str, Any], fmt: str) -> None:
    from safetensors import safe_open

    with safe_open(str(saved[fmt]), framework="pt") as handle:
        metadata = handle.metadata()
    spec = saved["model"].spec
    assert metadata["modelspec.architecture"] == f"{spec.modelspec_architecture}/lora"
    assert metadata["ss_base_model_version"] == spec.kohya_base_model_version


def test_an_embedding_of_a_model_without_t5_holds_the_clip_vectors_alone() -> None:
    from onetrainer.util.keymaps.embeddings import a1111_to_embedding, embedding_to_a1111
    from onetrainer.util.keymaps.engine import KeyMapError

    spec = get_family("sd35-large")
    vectors = {"text_encoder": torch.ones(2, 32), "text_encoder_2": torch.zeros(2, 48)}
    file = embedding_to_a1111(vectors, spec)
    assert sorted(file) == ["clip_g", "clip_l"]
    assert sorted(a1111_to_embedding(file, spec)) == ["text_encoder", "text_encoder_2"]
    with_t5 = embedding_to_a1111({**vectors, "text_encoder_3": torch.ones(2, 96)}, spec)
    assert sorted(a1111_to_embedding(with_t5, spec)) == ["text_encoder", "text_encoder_2", "text_encoder_3"]
    with pytest.raises(KeyMapError, match="needs vectors for text_encoder_2"):
        embedding_to_a1111({"text_encoder": torch.ones(2, 32)}, spec)


@pytest.mark.parametrize(("kind", "encoders"), [("sd35-large", ("clip_l", "clip_g")), ("flux-dev", ("clip_l",))])
def test_onetrainers_t5_key_is_read_as_t5_and_ours_is_written(kind: str, encoders: tuple[str, ...]) -> None:
    from onetrainer.util.keymaps.embeddings import a1111_to_embedding, embedding_to_a1111

    spec = get_family(kind)
    t5 = next(c.name for c in spec.text_encoders if c.embedding_key == "t5xxl")
    file = {**{key: torch.zeros(2, 8) for key in encoders}, "t5": torch.arange(16.0).reshape(2, 8)}
    vectors = a1111_to_embedding(file, spec)
    assert torch.equal(vectors[t5], file["t5"])
    assert "t5xxl" in embedding_to_a1111(vectors, spec)
    assert "t5" not in embedding_to_a1111(vectors, spec)


def test_clip_ls_projection_is_read_as_the_identity_whatever_the_file_holds() -> None:
    """SD 3 pools CLIP-L unprojected: diffusers' `from_single_file` and ComfyUI take an identity there, so a file
    whose CLIP-L brought its own projection must not change the pooled conditioning."""
    model = load_model("tiny:sd35-medium")
    state = {f"{name}.{key}": t for name, module in model.modules() for key, t in module.state_dict().items()}
    original = SD3_LAYOUT.writer(state).convert(state)
    projection = "text_encoders.clip_l.transformer.text_projection.weight"
    original[projection] = torch.randn_like(original[projection])
    back = SD3_LAYOUT.reader(original).convert(original)
    identity = back["text_encoder.text_projection.weight"]
    assert torch.equal(identity, torch.eye(*identity.shape))
    bigg = "text_encoder_2.text_projection.weight"
    assert torch.equal(back[bigg], state[bigg]), "CLIP-G's projection is read as it is"
