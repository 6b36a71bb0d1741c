"""LoRA files other tools write, read with the weights those tools apply.

Each test builds a tiny file in a peer's layout against a tiny model and checks the delta merged into every
adapted weight against the peer's own formula (kohya: up @ down * alpha / rank).
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from onetrainer.model.adapters import merge_lora, read_lora_file
from onetrainer.model.diffusion import DiffusionModel
from onetrainer.model_loader.pipeline import load_model
from onetrainer.util.atomic import save_safetensors
from onetrainer.util.detect import detect_path
from onetrainer.util.errors import UserError

Keys = Callable[[str], str]
"""A diffusers module path (`unet.down_blocks...`) -> the peer's module name in the file."""


@functools.cache
def _base(kind: str) -> DiffusionModel:
    return load_model(f"tiny:{kind}")


def _weights(model: DiffusionModel) -> dict[str, torch.Tensor]:
    return {
        f"{component}.{key}": value.detach().clone().float()
        for component, root in model.components.items()
        for key, value in root.state_dict().items()
    }


def _module(model: DiffusionModel, path: str) -> torch.nn.Module:
    component, _, rest = path.partition(".")
    return model.components[component].get_submodule(rest)


def _random(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * 0.1


def _lora(
    model: DiffusionModel, paths: list[str], name: Keys, *, down: str, up: str, alpha: str | None, rank: int = 4
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(file tensors, expected delta per weight) of a plain LoRA over `paths`, alpha 2 where it has an alpha key."""
    tensors: dict[str, torch.Tensor] = {}
    expected: dict[str, torch.Tensor] = {}
    for i, path in enumerate(paths):
        weight = _module(model, path).weight
        extra = [1] * (weight.ndim - 2)
        a = _random(rank, weight.shape[1], *weight.shape[2:], seed=2 * i)
        b = _random(weight.shape[0], rank, *extra, seed=2 * i + 1)
        tensors[f"{name(path)}.{down}"], tensors[f"{name(path)}.{up}"] = a, b
        scale = 1.0
        if alpha is not None:
            tensors[f"{name(path)}.{alpha}"] = torch.tensor(2.0)
            scale = 2.0 / rank
        expected[f"{path}.weight"] = (b.flatten(1) @ a.flatten(1)).reshape(weight.shape) * scale
    return tensors, expected


def _kohya_lora(
    model: DiffusionModel, paths: list[str], name: Keys
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """`_lora` in kohya's tensor names (`lora_down`, `lora_up`, `alpha`)."""
    return _lora(model, paths, name, down="lora_down.weight", up="lora_up.weight", alpha="alpha")


def _applied(kind: str, path: Path, **read: object) -> dict[str, torch.Tensor]:
    """The weight deltas merging the file at strength 1 makes in a fresh copy of the tiny model."""
    model = copy.deepcopy(_base(kind))
    before = _weights(model)
    merge_lora(model, read_lora_file(path, model.spec, configs=model.component_configs(), **read))
    after = _weights(model)
    return {key: after[key] - before[key] for key in before if not torch.equal(after[key], before[key])}


def _assert_applies(kind: str, path: Path, expected: dict[str, torch.Tensor], **read: object) -> None:
    got = _applied(kind, path, **read)
    assert sorted(got) == sorted(expected)
    for key, delta in expected.items():
        torch.testing.assert_close(got[key], delta.reshape(got[key].shape), rtol=1e-4, atol=1e-6)


def _dotted(prefix: str) -> Keys:
    """kohya-style: `prefix` + the path after the component, every "." written "_"."""
    return lambda path: prefix + path.partition(".")[2].replace(".", "_")


FLUX_PROJ = "transformer.transformer_blocks.0.attn.to_out.0"
FLUX_BFL = {FLUX_PROJ: "lora_unet_double_blocks_0_img_attn_proj"}


@pytest.mark.parametrize(
    "metadata", [{"ss_base_model_version": "flux1"}, {"modelspec.architecture": "flux-1-dev/lora"}]
)
def test_a_flux_lora_marked_by_sd_scripts_or_for_dev_applies_to_schnell(
    tmp_path: Path, metadata: dict[str, str]
) -> None:
    """sd-scripts marks every FLUX.1 LoRA `flux1` (older ones dev); dev and schnell share every layer a LoRA
    of the blocks adapts, so sampling applies it (with a warning where the file names dev)."""
    tensors, expected = _kohya_lora(_base("flux-schnell"), [FLUX_PROJ], FLUX_BFL.__getitem__)
    save_safetensors(tensors, tmp_path / "flux.safetensors", metadata=metadata)
    _assert_applies("flux-schnell", tmp_path / "flux.safetensors", expected, sampling=True)


def test_a_dev_marked_flux_lora_warns_on_schnell_and_is_refused_for_training(tmp_path: Path) -> None:
    tensors, _ = _kohya_lora(_base("flux-schnell"), [FLUX_PROJ], FLUX_BFL.__getitem__)
    path = tmp_path / "dev.safetensors"
    save_safetensors(tensors, path, metadata={"modelspec.architecture": "flux-1-dev/lora"})
    schnell = _base("flux-schnell").spec
    assert "marked for FLUX.1-dev" in " ".join(read_lora_file(path, schnell, sampling=True).warnings)
    with pytest.raises(UserError, match=r"for FLUX\.1-dev \(header metadata\), not for this FLUX\.1-schnell"):
        read_lora_file(path, schnell)
    save_safetensors(tensors, path, metadata={"ss_base_model_version": "sd_v1"})
    with pytest.raises(UserError, match=r"for SD 1\.x"):  # another architecture stays refused
        read_lora_file(path, schnell, sampling=True)


def test_sd_scripts_flux_version_names_both_flux_models(tmp_path: Path) -> None:
    tensors, _ = _kohya_lora(_base("flux-dev"), [FLUX_PROJ], FLUX_BFL.__getitem__)
    save_safetensors(tensors, tmp_path / "flux.safetensors", metadata={"ss_base_model_version": "flux1"})
    detection = detect_path(tmp_path / "flux.safetensors")
    assert detection.family is None
    assert set(detection.candidates) == {"flux-dev", "flux-schnell"}


DIFFUSERS_SD15 = [
    "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q",
    "unet.down_blocks.0.resnets.0.conv1",
]
DIFFUSERS_FLUX = [
    "transformer.transformer_blocks.0.attn.to_q",
    "transformer.single_transformer_blocks.0.proj_mlp",
    "transformer.norm_out.linear",
]


@pytest.mark.parametrize(("kind", "paths"), [("sd15", DIFFUSERS_SD15), ("flux-dev", DIFFUSERS_FLUX)])
def test_diffusers_files_with_alpha_keys(tmp_path: Path, kind: str, paths: list[str]) -> None:
    """TheLastBen-style: diffusers module paths with `<module>.alpha` beside lora_A / lora_B."""
    tensors, expected = _lora(_base(kind), paths, str, down="lora_A.weight", up="lora_B.weight", alpha="alpha")
    save_safetensors(tensors, tmp_path / "lora.safetensors")
    _assert_applies(kind, tmp_path / "lora.safetensors", expected)


SDXL_DIFFUSERS = [
    "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q",
    "unet.mid_block.attentions.0.transformer_blocks.0.attn2.to_k",
    "unet.up_blocks.0.resnets.1.conv1",
    "text_encoder_2.text_model.encoder.layers.0.self_attn.q_proj",
]


def _kohya_of_diffusers(path: str) -> str:
    """diffusers' `convert_state_dict_to_kohya`: `lora_unet_` / `lora_te1_` / `lora_te2_` + the diffusers path."""
    component, _, rest = path.partition(".")
    prefix = {"unet": "lora_unet_", "text_encoder": "lora_te1_", "text_encoder_2": "lora_te2_"}[component]
    if component != "unet" and not rest.startswith("text_model."):
        rest = "text_model." + rest  # kohya names keep it whatever transformers does
    return prefix + rest.replace(".", "_")


def _existing(model: DiffusionModel, paths: list[str]) -> list[str]:
    """The paths as this transformers names CLIP's layers (`text_model.` or not)."""
    names = {f"{c}.{n}" for c, root in model.components.items() for n, _ in root.named_modules()}
    return [path if path in names else path.replace("text_model.", "") for path in paths]


def test_sdxl_kohya_files_with_diffusers_unet_names(tmp_path: Path) -> None:
    """diffusers' `convert_state_dict_to_kohya` (its SDXL scripts' `--output_kohya_format`) keeps diffusers paths."""
    model = _base("sdxl")
    paths = _existing(model, SDXL_DIFFUSERS)
    tensors, expected = _kohya_lora(model, paths, _kohya_of_diffusers)
    save_safetensors(tensors, tmp_path / "xl.safetensors")
    _assert_applies("sdxl", tmp_path / "xl.safetensors", expected)


SD15_TE1 = [
    "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k",
    "text_encoder.text_model.encoder.layers.0.self_attn.q_proj",
]


def test_sd15_kohya_files_with_the_text_encoder_as_te1(tmp_path: Path) -> None:
    """diffusers' kohya converter names SD 1.x's one text encoder `lora_te1_`: not evidence of SDXL."""
    model = _base("sd15")
    paths = _existing(model, SD15_TE1)
    tensors, expected = _kohya_lora(model, paths, _kohya_of_diffusers)
    save_safetensors(tensors, tmp_path / "sd15.safetensors")
    _assert_applies("sd15", tmp_path / "sd15.safetensors", expected)
    released = {  # the released widths: SD 1.x's cross-attention and CLIP-L are 768 wide
        f"{_kohya_of_diffusers(SD15_TE1[0])}.lora_down.weight": torch.zeros(4, 768),
        f"{_kohya_of_diffusers(SD15_TE1[1])}.lora_down.weight": torch.zeros(4, 768),
    }
    save_safetensors(released, tmp_path / "released.safetensors")
    assert detect_path(tmp_path / "released.safetensors").family == "sd15"
    xl = {f"{_kohya_of_diffusers(SD15_TE1[0])}.lora_down.weight": torch.zeros(4, 2048)}
    save_safetensors(xl, tmp_path / "xl.safetensors")
    assert detect_path(tmp_path / "xl.safetensors").family == "sdxl"


LYCORIS_FLUX = [
    "transformer.transformer_blocks.0.attn.to_q",
    "transformer.single_transformer_blocks.0.proj_mlp",
    "transformer.norm_out.linear",
]


def test_simpletuner_lycoris_lokr_files(tmp_path: Path) -> None:
    """SimpleTuner: `lycoris_` + the transformer's diffusers path, a LoKr with `.alpha` (w1 full, w2 = a @ b)."""
    model = _base("flux-dev")
    tensors: dict[str, torch.Tensor] = {}
    expected: dict[str, torch.Tensor] = {}
    for i, path in enumerate(LYCORIS_FLUX):
        weight = _module(model, path).weight
        name = "lycoris_" + path.partition(".")[2].replace(".", "_")
        w1 = _random(2, 2, seed=3 * i)
        a, b = _random(weight.shape[0] // 2, 4, seed=3 * i + 1), _random(4, weight.shape[1] // 2, seed=3 * i + 2)
        tensors |= {
            f"{name}.lokr_w1": w1,
            f"{name}.lokr_w2_a": a,
            f"{name}.lokr_w2_b": b,
            f"{name}.alpha": torch.tensor(2.0),
        }
        expected[f"{path}.weight"] = torch.kron(w1, a @ b) * 2.0 / 4
    save_safetensors(tensors, tmp_path / "lycoris.safetensors")
    assert detect_path(tmp_path / "lycoris.safetensors").could_be("flux-dev")
    assert not detect_path(tmp_path / "lycoris.safetensors").could_be("sd15")
    _assert_applies("flux-dev", tmp_path / "lycoris.safetensors", expected)


OLD_DIFFUSERS = [
    "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q",
    "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_out.0",
    "text_encoder.text_model.encoder.layers.0.self_attn.q_proj",
    "text_encoder.text_model.encoder.layers.0.self_attn.out_proj",
]


def _processor_name(path: str) -> str:
    """diffusers' attention processors: `attn1.processor.to_q_lora`, the text encoder's `self_attn.to_q_lora`."""
    if ".attn1." in path:
        head, _, layer = path.rpartition(".")
        head = head.removesuffix(".to_out")
        layer = "to_out" if layer == "0" else layer
        return f"{head}.processor.{layer}_lora"
    head, _, layer = path.rpartition(".")
    return f"{head}.to_{layer.removesuffix('_proj')}_lora"


@pytest.mark.parametrize(
    ("name", "down", "up"),
    [
        (_processor_name, "down.weight", "up.weight"),
        (str, "lora.down.weight", "lora.up.weight"),
        (str, "lora_linear_layer.down.weight", "lora_linear_layer.up.weight"),
    ],
    ids=["attention-processor", "lora-compatible-linear", "lora-linear-layer"],
)
def test_old_diffusers_names(tmp_path: Path, name: Keys, down: str, up: str) -> None:
    """Files from diffusers before peft, which its `load_lora_weights` still converts: alpha = rank (scale 1)."""
    model = _base("sd15")
    paths = _existing(model, OLD_DIFFUSERS)
    tensors, expected = _lora(
        model,
        paths,
        lambda p: name(
            p if not p.startswith("text_encoder.encoder") else p.replace("text_encoder.", "text_encoder.text_model.")
        ),
        down=down,
        up=up,
        alpha=None,
    )
    save_safetensors(tensors, tmp_path / "old.safetensors")
    _assert_applies("sd15", tmp_path / "old.safetensors", expected)


ORIGINAL_SD3 = {
    "joint_blocks.0.x_block.attn.qkv": ("attn.to_q", "attn.to_k", "attn.to_v"),
    "joint_blocks.0.context_block.attn.qkv": ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"),
    "joint_blocks.0.x_block.attn2.qkv": ("attn2.to_q", "attn2.to_k", "attn2.to_v"),
    "joint_blocks.0.x_block.mlp.fc1": ("ff.net.0.proj",),
    "joint_blocks.0.context_block.mlp.fc2": ("ff_context.net.2",),
    "joint_blocks.0.x_block.adaLN_modulation.1": ("norm1.linear",),
    "joint_blocks.0.context_block.adaLN_modulation.1": ("norm1_context.linear",),
    "joint_blocks.1.x_block.attn.proj": ("attn.to_out.0",),
    "joint_blocks.1.context_block.adaLN_modulation.1": ("norm1_context.linear",),
    "final_layer.adaLN_modulation.1": ("norm_out.linear",),
    "final_layer.linear": ("proj_out",),
    "x_embedder.proj": ("pos_embed.proj",),
    "t_embedder.mlp.0": ("time_text_embed.timestep_embedder.linear_1",),
    "context_embedder": ("context_embedder",),
}
"""Stability's MMDiT module -> the diffusers layers it is (joined along the rows), as ComfyUI's
`mmdit_to_diffusers` maps them; block 1 is the tiny model's last, whose text stream only modulates."""
SWAPPED_SD3 = ("final_layer.adaLN_modulation.1", "joint_blocks.1.context_block.adaLN_modulation.1")
"""(shift, scale) in the original layout, (scale, shift) in diffusers: ComfyUI swaps the halves."""


def _diffusers_sd3(original: str, part: str) -> str:
    block = original.split(".")[1] if original.startswith("joint_blocks.") else None
    return f"transformer.transformer_blocks.{block}.{part}" if block is not None else f"transformer.{part}"


def _sd_scripts_sd3(model: DiffusionModel) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """sd-scripts' SD 3 LoRA: `lora_unet_` + the original path, one LoRA (rank 4, alpha 2) per original layer;
    each diffusers part gets its rows of up @ down * alpha / rank, halves swapped where the layouts differ."""
    tensors: dict[str, torch.Tensor] = {}
    expected: dict[str, torch.Tensor] = {}
    for i, (original, parts) in enumerate(ORIGINAL_SD3.items()):
        weights = [_module(model, _diffusers_sd3(original, part)).weight for part in parts]
        shape = (sum(w.shape[0] for w in weights), *weights[0].shape[1:])
        down = _random(4, *shape[1:], seed=2 * i)
        up = _random(shape[0], 4, *[1] * (len(shape) - 2), seed=2 * i + 1)
        name = "lora_unet_" + original.replace(".", "_")
        tensors |= {f"{name}.lora_down.weight": down, f"{name}.lora_up.weight": up, f"{name}.alpha": torch.tensor(2.0)}
        delta = (up.flatten(1) @ down.flatten(1)).reshape(shape) * 2.0 / 4
        if original in SWAPPED_SD3:
            delta = torch.cat(delta.chunk(2)[::-1])
        for part, rows in zip(parts, delta.split([w.shape[0] for w in weights]), strict=True):
            expected[f"{_diffusers_sd3(original, part)}.weight"] = rows
    return tensors, expected


def test_sd_scripts_sd3_files_with_the_original_mmdit_names(tmp_path: Path) -> None:
    """sd-scripts names SD 3's MMDiT as Stability does: fused q/k/v split into rows, swapped halves swapped back."""
    model = _base("sd35-medium")
    tensors, expected = _sd_scripts_sd3(model)
    save_safetensors(tensors, tmp_path / "sd3.safetensors")
    assert detect_path(tmp_path / "sd3.safetensors").could_be("sd35-medium")
    _assert_applies("sd35-medium", tmp_path / "sd3.safetensors", expected)
    alone = read_lora_file(tmp_path / "sd3.safetensors", model.spec)  # no model: the last block found by shape
    given = read_lora_file(tmp_path / "sd3.safetensors", model.spec, configs=model.component_configs())
    assert sorted(alone.tensors) == sorted(given.tensors)
    assert all(torch.equal(alone.tensors[key], given.tensors[key]) for key in given.tensors)


FUSED_FLUX = {
    "double_blocks.0.img_attn.qkv": ("transformer_blocks.0.attn.to_q", "attn.to_k", "attn.to_v"),
    "double_blocks.1.txt_attn.qkv": ("transformer_blocks.1.attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"),
    "single_blocks.1.linear1": ("single_transformer_blocks.1.attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp"),
    "final_layer.adaLN_modulation.1": ("norm_out.linear",),
}
"""BFL's fused layers (and the final modulation, whose halves BFL swaps) -> their diffusers parts in row order;
a part after the first names its path after the first one's block."""


def _flux_parts(original: str) -> list[str]:
    first, *rest = FUSED_FLUX[original]
    block = first.rpartition(".attn.")[0] if rest else ""
    return [f"transformer.{first}", *(f"transformer.{block}.{part}" for part in rest)]


def _joined(model: DiffusionModel, original: str) -> torch.Tensor:
    """The BFL layer's weight: its parts' weights joined along the rows, halves swapped for the final layer."""
    joined = torch.cat([_module(model, part).weight.detach().float() for part in _flux_parts(original)])
    return torch.cat(joined.chunk(2)[::-1]) if original.startswith("final_layer.") else joined


def _expected_rows(model: DiffusionModel, original: str, delta: torch.Tensor) -> dict[str, torch.Tensor]:
    """Each diffusers part's rows of a BFL layer's delta (halves swapped back for the final layer)."""
    if original.startswith("final_layer."):
        delta = torch.cat(delta.chunk(2)[::-1])
    parts = _flux_parts(original)
    sizes = [_module(model, part).weight.shape[0] for part in parts]
    return {f"{part}.weight": rows for part, rows in zip(parts, delta.split(sizes), strict=True)}


def test_sd_scripts_flux_lokr_on_fused_layers_applies_for_sampling(tmp_path: Path) -> None:
    """sd-scripts with LyCORIS: a LoKr on BFL's fused layers, kron(w1, w2_a @ w2_b) * alpha / rank over the whole
    layer as ComfyUI applies it, each diffusers part its rows; training from it or converting it stays refused."""
    model = _base("flux-dev")
    tensors: dict[str, torch.Tensor] = {}
    expected: dict[str, torch.Tensor] = {}
    for i, original in enumerate(FUSED_FLUX):
        rows, columns = _joined(model, original).shape
        name = "lora_unet_" + original.replace(".", "_")
        w1, a, b = (
            _random(2, 2, seed=3 * i),
            _random(rows // 2, 4, seed=3 * i + 1),
            _random(4, columns // 2, seed=3 * i + 2),
        )
        tensors |= {
            f"{name}.lokr_w1": w1,
            f"{name}.lokr_w2_a": a,
            f"{name}.lokr_w2_b": b,
            f"{name}.alpha": torch.tensor(2.0),
        }
        expected |= _expected_rows(model, original, torch.kron(w1, a @ b) * 2.0 / 4)
    save_safetensors(tensors, tmp_path / "lokr.safetensors")
    _assert_applies("flux-dev", tmp_path / "lokr.safetensors", expected, sampling=True)
    with pytest.raises(UserError, match="a LoKr"):
        read_lora_file(tmp_path / "lokr.safetensors", model.spec, configs=model.component_configs())


@pytest.mark.parametrize("axis", ["output", "input"])
def test_sd_scripts_flux_dora_on_fused_layers_applies_for_sampling(tmp_path: Path, axis: str) -> None:
    """A DoRA on a fused layer normalises the whole joined weight W + dW per row or column (`dora_scale`'s shape
    says which), as ComfyUI's `weight_decompose` does, before each part takes its rows."""
    model = _base("flux-dev")
    tensors: dict[str, torch.Tensor] = {}
    expected: dict[str, torch.Tensor] = {}
    for i, original in enumerate(list(FUSED_FLUX)[:3]):
        weight = _joined(model, original)
        name = "lora_unet_" + original.replace(".", "_")
        down, up = _random(4, weight.shape[1], seed=3 * i), _random(weight.shape[0], 4, seed=3 * i + 1)
        combined = weight + up @ down * 2.0 / 4
        dim = 1 if axis == "output" else 0
        magnitude = combined.norm(dim=dim, keepdim=True) * (
            1 + _random(*combined.norm(dim=dim, keepdim=True).shape, seed=3 * i + 2)
        )
        tensors |= {
            f"{name}.lora_down.weight": down,
            f"{name}.lora_up.weight": up,
            f"{name}.dora_scale": magnitude,
            f"{name}.alpha": torch.tensor(2.0),
        }
        expected |= _expected_rows(
            model, original, combined * magnitude / combined.norm(dim=dim, keepdim=True) - weight
        )
    save_safetensors(tensors, tmp_path / "dora.safetensors")
    _assert_applies("flux-dev", tmp_path / "dora.safetensors", expected, sampling=True)
    with pytest.raises(UserError, match="a DoRA"):
        read_lora_file(tmp_path / "dora.safetensors", model.spec, configs=model.component_configs())


def test_sd_scripts_sd3_lokr_on_the_fused_qkv_applies_for_sampling(tmp_path: Path) -> None:
    """The same rule for SD 3's original names: a LoKr over `x_block.attn.qkv` and the swapped final modulation."""
    model = _base("sd35-medium")
    tensors: dict[str, torch.Tensor] = {}
    expected: dict[str, torch.Tensor] = {}
    for i, original in enumerate(("joint_blocks.0.x_block.attn.qkv", "final_layer.adaLN_modulation.1")):
        parts = [_diffusers_sd3(original, part) for part in ORIGINAL_SD3[original]]
        weights = [_module(model, part).weight for part in parts]
        rows, columns = sum(w.shape[0] for w in weights), weights[0].shape[1]
        name = "lora_unet_" + original.replace(".", "_")
        w1, a, b = (
            _random(2, 2, seed=3 * i),
            _random(rows // 2, 4, seed=3 * i + 1),
            _random(4, columns // 2, seed=3 * i + 2),
        )
        tensors |= {
            f"{name}.lokr_w1": w1,
            f"{name}.lokr_w2_a": a,
            f"{name}.lokr_w2_b": b,
            f"{name}.alpha": torch.tensor(2.0),
        }
        delta = torch.kron(w1, a @ b) * 2.0 / 4
        delta = torch.cat(delta.chunk(2)[::-1]) if original in SWAPPED_SD3 else delta
        expected |= {f"{p}.weight": d for p, d in zip(parts, delta.split([w.shape[0] for w in weights]), strict=True)}
    save_safetensors(tensors, tmp_path / "lokr.safetensors")
    _assert_applies("sd35-medium", tmp_path / "lokr.safetensors", expected, sampling=True)
    with pytest.raises(UserError, match="a LoKr"):
        read_lora_file(tmp_path / "lokr.safetensors", model.spec, configs=model.component_configs())
