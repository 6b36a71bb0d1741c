"""DoRA files compute the weights we trained in the loaders users load them with (issue 11, item 4).

A1111, ComfyUI and Forge cannot run here, so their formulas are written out below as references, each
from the file it comes from; diffusers runs for real. A kohya DoRA keeps its magnitudes per input
column, the layout all three UIs compute exactly; a peft DoRA per output row, which diffusers reads.
The check is on what a layer computes: each adapted layer of our trained model against the same base
layer carrying the weight the loader builds from our file.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from onetrainer.model.diffusion import DiffusionModel
from onetrainer.model_saver.diffusion import DiffusionSaver
from onetrainer.util.enums import TrainingMethod
from onetrainer.util.errors import UserError
from onetrainer.util.family import get_family
from onetrainer.util.keymaps.lora import peft_to_kohya
from onetrainer.util.keymaps.lora_peft import peft_adapter_state

STRENGTHS = (1.0, 0.6)
NAMING = get_family("sd15").lora_naming
assert NAMING is not None


def a1111_weight(weight: torch.Tensor, params: dict[str, torch.Tensor], strength: float) -> torch.Tensor:
    """AUTOMATIC1111 `extensions-builtin/Lora/network_lora.py` (`calc_updown`: up @ down in the layer's
    shape) and `network.py` (`finalize_updown`: times alpha / dim; `apply_weight_decompose`: W + updown
    divided by its norm per input column, times `dora_scale`, minus W; then times the multiplier)."""
    up, down = params["lora_up.weight"], params["lora_down.weight"]
    updown = (up.reshape(up.shape[0], -1) @ down.reshape(down.shape[0], -1)).reshape(weight.shape)
    updown = updown * (params["alpha"].item() / down.shape[0])
    merged = updown + weight
    norm = (
        merged.transpose(0, 1)
        .reshape(merged.shape[1], -1)
        .norm(dim=1, keepdim=True)
        .reshape(merged.shape[1], *[1] * (weight.ndim - 1))
        .transpose(0, 1)
    )
    updown = merged * (params["dora_scale"] / norm) - weight
    return weight + updown * strength


def comfyui_weight(weight: torch.Tensor, params: dict[str, torch.Tensor], strength: float) -> torch.Tensor:
    """ComfyUI `comfy/weight_adapter/lora.py` (`calculate_weight`: alpha / rank, lora_diff = up @ down) and
    `comfy/weight_adapter/base.py` (`weight_decompose`). Forge's `backend/patcher/lora.py` has the same
    `weight_decompose` ("modified from" ComfyUI's) and the same "lora" patch: one reference for both."""
    up, down = params["lora_up.weight"], params["lora_down.weight"]
    alpha = params["alpha"].item() / down.shape[0]
    lora_diff = torch.mm(up.flatten(start_dim=1), down.flatten(start_dim=1)).reshape(weight.shape) * alpha
    dora_scale = params["dora_scale"]
    weight_calc = weight + lora_diff
    if dora_scale.shape[0] == weight_calc.shape[0]:  # "wd_on_output_axis": normalised by the norms of W alone
        weight_norm = weight.reshape(weight.shape[0], -1).norm(dim=1, keepdim=True)
        weight_norm = weight_norm.reshape(weight.shape[0], *[1] * (weight.dim() - 1))
    else:
        weight_norm = (
            weight_calc.transpose(0, 1)
            .reshape(weight_calc.shape[1], -1)
            .norm(dim=1, keepdim=True)
            .reshape(weight_calc.shape[1], *[1] * (weight_calc.dim() - 1))
            .transpose(0, 1)
        )
    weight_norm = weight_norm + torch.finfo(weight.dtype).eps
    weight_calc = weight_calc * (dora_scale / weight_norm)
    return weight + strength * (weight_calc - weight) if strength != 1.0 else weight_calc


LOADERS = {"a1111": a1111_weight, "comfyui": comfyui_weight, "forge": comfyui_weight}


def _kohya_modules(path: Path) -> dict[str, dict[str, torch.Tensor]]:
    modules: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in load_file(str(path)).items():
        name, _, param = key.partition(".")
        modules.setdefault(name, {})[param] = tensor.float()
    return modules


def _layer_input(layer: torch.nn.Module, generator: torch.Generator) -> torch.Tensor:
    base = layer.get_base_layer()
    if isinstance(base, torch.nn.Conv2d):
        return torch.randn(2, base.in_channels, 6, 6, generator=generator)
    return torch.randn(3, base.in_features, generator=generator)


def _base_output(layer: torch.nn.Module, weight: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    base = layer.get_base_layer()
    if isinstance(base, torch.nn.Conv2d):
        return F.conv2d(x, weight, base.bias, base.stride, base.padding, base.dilation, base.groups)
    return F.linear(x, weight, base.bias)


def _worst_error(
    model: DiffusionModel, path: Path, loader: Callable[..., torch.Tensor], strength: float = 1.0
) -> tuple[float, int]:
    """The largest difference between a trained layer's output and the loader's weight on the same input,
    relative to what the adapter changes in that layer; and how many layers were compared."""
    generator = torch.Generator().manual_seed(4)
    worst, count = 0.0, 0
    for name, params in _kohya_modules(path).items():
        component, _, module = NAMING.from_kohya(name).partition(".")
        layer = getattr(model, component).get_submodule(module)
        weight = layer.get_base_layer().weight.detach().float()
        x = _layer_input(layer, generator)
        with torch.no_grad():
            plain = _base_output(layer, weight, x)
            trained = plain + strength * (layer(x) - plain)
            loaded = _base_output(layer, loader(weight, params, strength), x)
        change = (trained - plain).abs().max().item()
        worst = max(worst, (loaded - trained).abs().max().item() / change)
        count += 1
    return worst, count


def _adapted_layers(model: DiffusionModel) -> int:
    from peft.tuners.lora import LoraLayer

    return sum(isinstance(m, LoraLayer) for c in ("unet", "text_encoder") for m in getattr(model, c).modules())


def _save(model: DiffusionModel, path: Path, fmt: str) -> Path:
    saver = DiffusionSaver()
    return saver.save(model, path, method=TrainingMethod.LORA, format=fmt, dtype="fp32")[0]


@pytest.mark.parametrize("strength", STRENGTHS)
@pytest.mark.parametrize("loader", list(LOADERS))
def test_each_ui_computes_our_kohya_dora_exactly(
    lora_model: Callable, tmp_path: Path, loader: str, strength: float
) -> None:
    model = lora_model("dora", fmt="kohya")
    path = _save(model, tmp_path / "dora.safetensors", "kohya")
    error, layers = _worst_error(model, path, LOADERS[loader], strength)
    assert layers == _adapted_layers(model)
    assert error < 1e-4


@pytest.mark.parametrize("loader", ["a1111", "comfyui"])
def test_peft_s_per_row_layout_would_compute_other_weights_in_the_uis(
    lora_model: Callable, tmp_path: Path, loader: str
) -> None:
    """Why the axis follows the format: the same magnitudes kept per output row (what we wrote before)
    are scrambled by A1111 and divided by the wrong norm by ComfyUI/Forge."""
    from safetensors.torch import save_file

    model = lora_model("dora", fmt="peft")
    tensors, alphas = {}, {}
    for component in ("unet", "text_encoder"):
        own, own_alphas = peft_adapter_state(getattr(model, component), component)
        tensors.update(own)
        alphas.update(own_alphas)
    path = tmp_path / "per-row.safetensors"
    save_file(peft_to_kohya(tensors, alphas, NAMING), str(path))
    error, _ = _worst_error(model, path, LOADERS[loader])
    assert error > 0.05


def test_a_per_row_dora_is_not_written_as_kohya(lora_model: Callable, tmp_path: Path) -> None:
    with pytest.raises(UserError, match="magnitude per output row") as caught:
        _save(lora_model("dora", fmt="peft"), tmp_path / "dora.safetensors", "kohya")
    assert "saving.format: kohya" in (caught.value.hint or "")
    assert not (tmp_path / "dora.safetensors").exists()


def test_a_per_column_dora_is_not_written_as_peft(lora_model: Callable, tmp_path: Path) -> None:
    with pytest.raises(UserError, match="magnitude per input column"):
        _save(lora_model("dora", fmt="kohya"), tmp_path / "dora.safetensors", "peft")


def test_diffusers_drops_the_magnitudes_of_a_kohya_dora(
    lora_model: Callable, prediction: Callable, readme_loads_in: Callable, tiny_sd15_dir: Path, tmp_path: Path
) -> None:
    """What the README says: a kohya DoRA is for the UIs; diffusers loads it as a plain LoRA."""
    from diffusers import StableDiffusionPipeline

    model = lora_model("dora", fmt="kohya")
    path = _save(model, tmp_path / "dora.safetensors", "kohya")
    pipe = StableDiffusionPipeline.from_pretrained(tiny_sd15_dir, safety_checker=None, feature_extractor=None)
    pipe.load_lora_weights(str(path.parent), weight_name=path.name)
    assert not any("lora_magnitude_vector" in name for name, _ in pipe.unet.named_parameters())
    ours = prediction(model.unet, model.text_encoder, model.tokenizer)
    assert not torch.allclose(prediction(pipe.unet, pipe.text_encoder, pipe.tokenizer), ours, atol=1e-3)
    assert "diffusers drops `dora_scale`" in readme_loads_in("DoRA", "kohya")
    assert "load_lora_weights" in readme_loads_in("LoRA, DoRA", "peft")
