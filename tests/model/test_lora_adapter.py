"""LoRA-family adapters: layer presets, injection, file reading, merging and continuing from a file."""

from __future__ import annotations

import copy
import functools
from pathlib import Path

import pytest
import torch

from onetrainer.model.adapters import inject_lora, load_lora_state, merge_lora, read_lora_file
from onetrainer.model.adapters.dora import dora_axis
from onetrainer.model.adapters.lora import LoraTargets
from onetrainer.model.adapters.targets import target_modules
from onetrainer.model.diffusion import DiffusionModel
from onetrainer.model_loader.pipeline import load_model
from onetrainer.model_saver.diffusion import DiffusionSaver
from onetrainer.util.atomic import save_safetensors
from onetrainer.util.enums import TrainingMethod
from onetrainer.util.errors import UserError
from onetrainer.util.family import get_family
from onetrainer.util.registry import ModuleKind, lookup

SD15 = get_family("sd15")


@functools.cache
def _base(kind: str) -> DiffusionModel:
    return load_model(f"tiny:{kind}")


def _model(kind: str = "sd15") -> DiffusionModel:
    """A fresh copy of a tiny model: copying is much faster than building one."""
    return copy.deepcopy(_base(kind))


def _presets(component: str) -> dict[str, tuple[str, ...]]:
    return dict(SD15.component(component).lora_presets)


def _targets(*components: str, preset: str = "attn-mlp") -> dict[str, LoraTargets]:
    """Each component's LoRA layers by the preset of its own table in the family spec."""
    return {name: LoraTargets(preset=preset, presets=_presets(name)) for name in components}


def _unet_output(model: DiffusionModel) -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    latents, context = torch.randn(1, 4, 8, 8, generator=gen), torch.randn(1, 77, 32, generator=gen)
    with torch.no_grad():
        return model.unet(latents, torch.tensor([500]), encoder_hidden_states=context).sample


def _randomise(model: DiffusionModel, adapter) -> None:
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for component in adapter.components:
            for param in adapter.parameters(model, component):
                param.copy_(torch.randn(param.shape, generator=gen) * 0.2 + (1.0 if param.ndim == 1 else 0.0))


def _save_kohya(model: DiffusionModel, path: Path) -> Path:
    DiffusionSaver().save(model, path, method=TrainingMethod.LORA, format="kohya", dtype="fp32")
    return path


def test_presets_grow_and_regex_replaces_them() -> None:
    unet = _model().unet
    presets = _presets("unet")
    attn, mlp, full = (set(target_modules(unet, "unet", presets, preset)) for preset in ("attn", "attn-mlp", "full"))
    assert attn < mlp < full
    assert all(name.endswith(("to_q", "to_k", "to_v", "to_out.0")) for name in attn)
    assert "down_blocks.0.resnets.0.conv1" in full
    assert "down_blocks.0.resnets.0.conv1" not in mlp
    assert "conv_in" not in full
    assert target_modules(unet, "unet", presets, "attn", regex=r"mid_block.*attn2\.to_k$") == [
        "mid_block.attentions.0.transformer_blocks.0.attn2.to_k"
    ]
    with pytest.raises(UserError, match="matches no"):
        target_modules(unet, "unet", presets, "attn", regex="nothing_here")


def test_text_encoder_presets() -> None:
    encoder = _model().text_encoder
    attn = target_modules(encoder, "text_encoder", _presets("text_encoder"), "attn")
    mlp = target_modules(encoder, "text_encoder", _presets("text_encoder"), "attn-mlp")
    assert len(attn) == 8
    assert len(mlp) == 12


@pytest.mark.parametrize("kind", ["lora", "dora", "loha", "lokr"])
def test_fresh_adapter_changes_nothing_until_trained(kind: str) -> None:
    model = _model()
    before = _unet_output(model)
    adapter = inject_lora(model, kind=kind, rank=2, alpha=2.0, targets=_targets("unet", preset="attn"))
    assert torch.allclose(_unet_output(model), before, atol=1e-6)
    assert adapter.state_dicts(model)["unet"]
    assert all(param.requires_grad for param in adapter.parameters(model, "unet"))


def test_same_seed_gives_the_same_initial_adapter() -> None:
    first, second = _model(), _model()
    a = inject_lora(first, kind="lora", rank=2, alpha=2.0, targets=_targets("unet"), seed=3)
    b = inject_lora(second, kind="lora", rank=2, alpha=2.0, targets=_targets("unet"), seed=3)
    for (key, x), (_, y) in zip(
        a.state_dicts(first)["unet"].items(), b.state_dicts(second)["unet"].items(), strict=True
    ):
        assert torch.equal(x, y), key


@pytest.mark.parametrize("kind", ["lora", "dora", "loha", "lokr"])
def test_merging_a_saved_file_equals_the_live_adapter(kind: str, tmp_path: Path) -> None:
    trained = _model()
    adapter = inject_lora(trained, kind=kind, rank=2, alpha=1.0, targets=_targets("unet", preset="full"))
    _randomise(trained, adapter)
    trained.adapters.lora = adapter
    expected = _unet_output(trained)
    path = _save_kohya(trained, tmp_path / "lora.safetensors")

    fresh = _model()
    assert not torch.allclose(_unet_output(fresh), expected, atol=1e-3)
    merged = merge_lora(fresh, read_lora_file(path, SD15), strength=1.0)
    assert merged == len(target_modules(fresh.unet, "unet", _presets("unet"), "full"))
    assert torch.allclose(_unet_output(fresh), expected, atol=1e-5)


@pytest.mark.parametrize("fmt", ["kohya", "peft"])
def test_merging_a_saved_dora_equals_the_live_adapter_on_either_axis(fmt: str, tmp_path: Path) -> None:
    trained = _model()
    axis = dora_axis(fmt)
    adapter = inject_lora(
        trained, kind="dora", rank=2, alpha=1.0, targets=_targets("unet", preset="full"), dora_axis=axis
    )
    _randomise(trained, adapter)
    trained.adapters.lora = adapter
    expected = _unet_output(trained)
    path = tmp_path / "dora.safetensors"
    lookup(ModuleKind.SAVER, "sd15")().save(trained, path, method=TrainingMethod.LORA, format=fmt, dtype="fp32")

    fresh = _model()
    merge_lora(fresh, read_lora_file(path, SD15), strength=1.0)
    assert torch.allclose(_unet_output(fresh), expected, atol=1e-5)


@pytest.mark.parametrize("fmt", ["kohya", "peft"])
def test_continuing_a_dora_needs_the_same_axis(fmt: str, tmp_path: Path) -> None:
    trained = _model()
    axis = dora_axis(fmt)
    adapter = inject_lora(
        trained, kind="dora", rank=2, alpha=1.0, targets=_targets("unet", "text_encoder"), dora_axis=axis
    )
    _randomise(trained, adapter)
    trained.adapters.lora = adapter
    path = tmp_path / "dora.safetensors"
    lookup(ModuleKind.SAVER, "sd15")().save(trained, path, method=TrainingMethod.LORA, format=fmt, dtype="fp32")
    lora = read_lora_file(path, SD15)

    resumed = _model()
    again = inject_lora(
        resumed, kind="dora", rank=2, alpha=1.0, targets=_targets("unet", "text_encoder"), dora_axis=axis
    )
    load_lora_state(resumed, again, lora.tensors, lora.alphas, source=str(path))
    assert torch.allclose(_unet_output(resumed), _unet_output(trained), atol=1e-6)
    other = _model()
    flipped = inject_lora(
        other,
        kind="dora",
        rank=2,
        alpha=1.0,
        targets=_targets("unet", "text_encoder"),
        dora_axis=dora_axis("peft" if fmt == "kohya" else "kohya"),
    )
    with pytest.raises(UserError, match="tensors this dora adapter does not") as error:
        load_lora_state(other, flipped, lora.tensors, lora.alphas, source=str(path))
    assert "other axis" in (error.value.hint or "")


def test_merge_strength_scales_the_delta(tmp_path: Path) -> None:
    trained = _model()
    adapter = inject_lora(trained, kind="lora", rank=2, alpha=1.0, targets=_targets("unet", preset="attn"))
    _randomise(trained, adapter)
    trained.adapters.lora = adapter
    path = _save_kohya(trained, tmp_path / "lora.safetensors")
    base, full, half = _model(), _model(), _model()
    merge_lora(full, read_lora_file(path, SD15), strength=1.0)
    merge_lora(half, read_lora_file(path, SD15), strength=0.5)
    weight = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.weight"
    w0, w1, w5 = (m.unet.state_dict()[weight] for m in (base, full, half))
    assert torch.allclose(w5 - w0, (w1 - w0) / 2, atol=1e-6)


def test_continuing_from_a_file_restores_weights_and_scales(tmp_path: Path) -> None:
    trained = _model()
    adapter = inject_lora(trained, kind="lora", rank=2, alpha=1.0, targets=_targets("unet", "text_encoder"))
    _randomise(trained, adapter)
    trained.adapters.lora = adapter
    path = _save_kohya(trained, tmp_path / "lora.safetensors")

    resumed = _model()
    again = inject_lora(resumed, kind="lora", rank=2, alpha=4.0, targets=_targets("unet", "text_encoder"), seed=9)
    lora = read_lora_file(path, SD15)
    load_lora_state(resumed, again, lora.tensors, lora.alphas, source=str(path))
    for component in ("unet", "text_encoder"):
        for key, tensor in adapter.state_dicts(trained)[component].items():
            assert torch.equal(again.state_dicts(resumed)[component][key], tensor), key
    assert torch.allclose(_unet_output(resumed), _unet_output(trained), atol=1e-6)


def test_continuing_with_another_rank_is_refused(tmp_path: Path) -> None:
    trained = _model()
    trained.adapters.lora = inject_lora(trained, kind="lora", rank=2, alpha=1.0, targets=_targets("unet"))
    path = _save_kohya(trained, tmp_path / "lora.safetensors")
    other = _model()
    bigger = inject_lora(other, kind="lora", rank=4, alpha=1.0, targets=_targets("unet"))
    lora = read_lora_file(path, SD15)
    with pytest.raises(UserError, match=r"\(2, 32, 1, 1\) in the file but \(4, 32, 1, 1\) here") as error:
        load_lora_state(other, bigger, lora.tensors, lora.alphas, source=str(path))
    assert "lora.rank is 4" in error.value.hint
    attn_only = _model()
    narrower = inject_lora(attn_only, kind="lora", rank=2, alpha=1.0, targets=_targets("unet", preset="attn"))
    with pytest.raises(UserError, match="tensors this lora adapter does not"):
        load_lora_state(attn_only, narrower, lora.tensors, lora.alphas, source=str(path))


def test_lora_for_another_architecture_is_refused(tmp_path: Path) -> None:
    sd2 = _model("sd2")
    sd2.adapters.lora = inject_lora(sd2, kind="lora", rank=2, alpha=1.0, targets=_targets("unet"))
    path = _save_kohya(sd2, tmp_path / "sd2.safetensors")
    with pytest.raises(UserError, match=r"for SD 2\.x"):
        read_lora_file(path, SD15)
    save_safetensors(
        {"lora_te2_text_model_encoder_layers_0_mlp_fc1.lora_down.weight": torch.zeros(2, 1280)},
        tmp_path / "xl.safetensors",
    )
    with pytest.raises(UserError, match=r"for SDXL \(LoRA for two text encoders\), not for this SD 1\.x model"):
        read_lora_file(tmp_path / "xl.safetensors", SD15)
    save_safetensors(  # FLUX.1's transformer modules: dev or schnell, and nothing else
        {"lora_transformer_single_transformer_blocks_0_attn_to_k.lora_down.weight": torch.zeros(2, 3072)},
        tmp_path / "flux.safetensors",
    )
    with pytest.raises(UserError, match=r"for FLUX\.1-dev/FLUX\.1-schnell \(FLUX\.1 LoRA .*not for this SD 1\.x model"):
        read_lora_file(tmp_path / "flux.safetensors", SD15)
    save_safetensors(  # a made-up transformer's LoRA: no family has these modules
        {"lora_transformer_zeta_blocks_0_attn_qkv.lora_down.weight": torch.zeros(2, 3072)},
        tmp_path / "zeta.safetensors",
    )
    with pytest.raises(
        UserError, match=r"cannot read this LoRA: lora_transformer_.*not a kohya module name of this model family"
    ):
        read_lora_file(tmp_path / "zeta.safetensors", SD15)


def test_an_embedding_is_not_a_lora(tmp_path: Path) -> None:
    save_safetensors({"emb_params": torch.zeros(2, 32)}, tmp_path / "emb.safetensors")
    with pytest.raises(UserError, match="not a LoRA"):
        read_lora_file(tmp_path / "emb.safetensors", SD15)


def test_a_shape_mismatch_names_the_layer(tmp_path: Path) -> None:
    key = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k"
    save_safetensors(
        {f"{key}.lora_down.weight": torch.zeros(2, 768), f"{key}.lora_up.weight": torch.zeros(32, 2)},
        tmp_path / "wide.safetensors",
    )
    with pytest.raises(UserError, match=r"attn2\.to_k is \(32, 32\) here but the LoRA's factor is \(2, 768\)") as error:
        merge_lora(_model(), read_lora_file(tmp_path / "wide.safetensors", SD15))
    assert "made for SD 1.x (cross-attention width 768)" in error.value.hint
