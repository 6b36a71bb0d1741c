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
    tensors, expected = _lora(
        _base("flux-schnell"),
        [FLUX_PROJ],
        FLUX_BFL.__getitem__,
        down="lora_down.weight",
        up="lora_up.weight",
        alpha="alpha",
    )
    save_safetensors(tensors, tmp_path / "flux.safetensors", metadata=metadata)
    _assert_applies("flux-schnell", tmp_path / "flux.safetensors", expected, sampling=True)


def test_a_dev_marked_flux_lora_warns_on_schnell_and_is_refused_for_training(tmp_path: Path) -> None:
    tensors, _ = _lora(
        _base("flux-schnell"),
        [FLUX_PROJ],
        FLUX_BFL.__getitem__,
        down="lora_down.weight",
        up="lora_up.weight",
        alpha="alpha",
    )
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
    tensors, _ = _lora(
        _base("flux-dev"),
        [FLUX_PROJ],
        FLUX_BFL.__getitem__,
        down="lora_down.weight",
        up="lora_up.weight",
        alpha="alpha",
    )
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
