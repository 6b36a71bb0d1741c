"""`training.compile` (regional compilation of the denoiser, cached) and `training.channels_last`.

The training tests compile with `aot_eager`: it traces and differentiates the blocks exactly as
inductor does but runs them with eager kernels, so it exercises the whole path in seconds; one test
runs inductor itself (the C++ backend, on this machine's compiler) to show its persistent cache.
"""

from __future__ import annotations

import copy
import functools
from pathlib import Path
from typing import Any

import pytest
import torch

from onetrainer.model.diffusion import DiffusionModel
from onetrainer.model_loader.pipeline import load_model
from onetrainer.model_setup import compile as regional
from onetrainer.model_setup.diffusion import DiffusionSetup
from onetrainer.util.atomic import save_safetensors
from onetrainer.util.config.schema import TrainConfig
from onetrainer.util.errors import UserError
from onetrainer.util.registry import ModuleKind, lookup

LOSS_TOLERANCE = 1e-5
"""Relative: compiled blocks reorder float32 arithmetic, so losses agree to float32 rounding, not bit for bit."""


@functools.cache
def _base() -> DiffusionModel:
    return load_model("tiny:sd15")


def _setup(method: str = "lora", **training: Any) -> DiffusionSetup:
    config = TrainConfig.model_validate(
        {"model": {"type": "sd15", "base": "tiny:sd15"}, "method": method, "training": {"device": "cpu", **training}}
    )
    setup = lookup(ModuleKind.SETUP, "sd15")(copy.deepcopy(_base()), config)
    setup.prepare("cpu", torch.float32)
    setup.train()
    return setup


def _train(setup: DiffusionSetup, sides: tuple[int, ...]) -> list[float]:
    """One AdamW step per latent side (several bucket shapes), from fixed batches and noise."""
    optimizer = torch.optim.AdamW([param for group in setup.parameter_groups() for param in group["params"]], lr=1e-3)
    generator = torch.Generator().manual_seed(0)
    width = setup.model.unet.config.cross_attention_dim
    losses = []
    for index, side in enumerate(sides):
        data = torch.Generator().manual_seed(index)
        batch = {
            "latents": torch.randn(2, 4, side, side, generator=data),
            "text_hidden": torch.randn(2, 77, width, generator=data),
        }
        loss = setup.loss(setup.predict(batch, generator), batch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
    return losses


class _Leaf(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.linear(x))


class _Block(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.leaves = torch.nn.ModuleList([_Leaf(), _Leaf()])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for leaf in self.leaves:
            x = x + leaf(x)
        return x


class _Dit(torch.nn.Module):
    """A denoiser that names no `_repeated_blocks`: its blocks are found from its lists."""

    def __init__(self) -> None:
        super().__init__()
        self.blocks = torch.nn.ModuleList([_Block(), _Block(), _Block()])
        self.head = torch.nn.Linear(4, 4)


def test_the_unets_repeated_blocks_are_the_ones_diffusers_names() -> None:
    unet = _base().unet
    assert regional.repeated_block_classes(unet) == ("BasicTransformerBlock",)


def test_without_named_blocks_the_outermost_repeated_ones_are_compiled_in_place(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv(regional.CACHE_VARIABLE, str(tmp_path / "cache"))
    model = _Dit()
    names = list(model.state_dict())
    assert regional.repeated_block_classes(model) == ("_Block", "_Leaf")
    assert regional.compile_repeated_blocks(model, backend="aot_eager") == 3
    assert all(block._compiled_call_impl is not None for block in model.blocks)
    assert all(leaf._compiled_call_impl is None for block in model.blocks for leaf in block.leaves)
    assert model.head._compiled_call_impl is None
    assert list(model.state_dict()) == names
    with pytest.raises(UserError, match="no repeated blocks"):
        regional.compile_repeated_blocks(torch.nn.Sequential(torch.nn.Linear(2, 2)))


def test_the_cache_lives_in_the_users_cache_folder_unless_torch_is_told_otherwise(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv(regional.CACHE_VARIABLE, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert regional.compile_cache_dir() == tmp_path / "xdg" / "onetrainer" / "torch-compile"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert regional.compile_cache_dir() == tmp_path / "home" / ".cache" / "onetrainer" / "torch-compile"
    assert regional.use_compile_cache().is_dir()
    import os

    assert os.environ[regional.CACHE_VARIABLE] == str(tmp_path / "home" / ".cache" / "onetrainer" / "torch-compile")
    monkeypatch.setenv(regional.CACHE_VARIABLE, str(tmp_path / "mine"))
    assert regional.use_compile_cache() == tmp_path / "mine"


@pytest.mark.parametrize(("method", "checkpointing"), [("lora", True), ("full", False)])
def test_compiled_training_matches_uncompiled_training(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, method: str, checkpointing: bool
) -> None:
    from torch._dynamo.utils import counters

    monkeypatch.setattr(regional, "BACKEND", "aot_eager")
    monkeypatch.setenv(regional.CACHE_VARIABLE, str(tmp_path / "cache"))
    counters.clear()
    sides = (8, 8, 16)  # a second bucket shape recompiles once, with dynamic sizes
    eager = _setup(method, gradient_checkpointing=checkpointing)
    compiled = _setup(method, gradient_checkpointing=checkpointing, compile=True)
    blocks = [module for module in compiled.model.unet.modules() if type(module).__name__ == "BasicTransformerBlock"]
    assert blocks
    assert all(block._compiled_call_impl is not None for block in blocks)
    assert list(compiled.trainable_state_dict()) == list(eager.trainable_state_dict())
    expected, actual = _train(eager, sides), _train(compiled, sides)
    assert actual == pytest.approx(expected, rel=LOSS_TOLERANCE)
    assert counters["stats"]["unique_graphs"] >= 2  # the blocks really ran compiled, for both shapes


@pytest.mark.slow
def test_inductor_keeps_compiled_code_for_the_next_run(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from torch._dynamo.utils import counters

    monkeypatch.setenv(regional.CACHE_VARIABLE, str(tmp_path / "cache"))

    def one_run() -> int:
        torch._dynamo.reset()
        counters.clear()
        torch.manual_seed(0)
        model = _Dit()
        regional.compile_repeated_blocks(model, backend="inductor")
        x = torch.randn(2, 4)
        for block in model.blocks:
            x = block(x)
        x.sum().backward()
        return int(counters["inductor"]["fxgraph_cache_hit"])

    assert one_run() == 0
    assert one_run() > 0  # forward and backward graphs come from the cache
    assert any((tmp_path / "cache").rglob("*"))
    torch._dynamo.reset()


def test_channels_last_keeps_training_and_backups_working(tmp_path: Path) -> None:
    setup = _setup("full", channels_last=True)
    convolutions = [module.weight for module in setup.model.unet.modules() if isinstance(module, torch.nn.Conv2d)]
    assert convolutions
    assert all(weight.is_contiguous(memory_format=torch.channels_last) for weight in convolutions)
    plain = _setup("full")
    assert _train(setup, (8,)) == pytest.approx(_train(plain, (8,)), rel=LOSS_TOLERANCE)
    save_safetensors(setup.trainable_state_dict(), tmp_path / "weights.safetensors")
    plain.load_trainable_state_dict(setup.trainable_state_dict())


def _flux_setup(**training: Any) -> DiffusionSetup:
    config = TrainConfig.model_validate(
        {
            "model": {"type": "flux-dev", "base": "tiny:flux-dev"},
            "method": "lora",
            "training": {"device": "cpu", **training},
        }
    )
    setup = lookup(ModuleKind.SETUP, "flux-dev")(copy.deepcopy(_flux_base()), config)
    setup.prepare("cpu", torch.float32)
    setup.train()
    return setup


@functools.cache
def _flux_base() -> DiffusionModel:
    return load_model("tiny:flux-dev")


def _train_flux(setup: DiffusionSetup, sides: tuple[int, ...]) -> list[float]:
    """One AdamW step per latent side of FLUX.1's 16-channel latents, from fixed batches and noise."""
    from onetrainer.model_setup.flux import POOLED_KEY, TEXT_KEY

    optimizer = torch.optim.AdamW([param for group in setup.parameter_groups() for param in group["params"]], lr=1e-3)
    generator = torch.Generator().manual_seed(0)
    config = setup.model.denoiser.config
    losses = []
    for index, side in enumerate(sides):
        data = torch.Generator().manual_seed(index)
        batch = {
            "latents": torch.randn(2, 16, side, side, generator=data),
            TEXT_KEY: torch.randn(2, 7, config.joint_attention_dim, generator=data),
            POOLED_KEY: torch.randn(2, config.pooled_projection_dim, generator=data),
        }
        loss = setup.loss(setup.predict(batch, generator), batch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
    return losses


def test_fluxs_transformer_compiles_its_named_blocks_and_trains_as_uncompiled(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # FLUX.1's transformer names its double- and single-stream blocks (diffusers' `_repeated_blocks`).
    monkeypatch.setattr(regional, "BACKEND", "aot_eager")
    monkeypatch.setenv(regional.CACHE_VARIABLE, str(tmp_path / "cache"))
    transformer = _flux_base().denoiser
    assert regional.repeated_block_classes(transformer) == ("FluxTransformerBlock", "FluxSingleTransformerBlock")
    eager = _flux_setup(gradient_checkpointing=True)
    compiled = _flux_setup(gradient_checkpointing=True, compile=True)
    blocks = [*compiled.model.denoiser.transformer_blocks, *compiled.model.denoiser.single_transformer_blocks]
    assert all(block._compiled_call_impl is not None for block in blocks)
    assert list(compiled.trainable_state_dict()) == list(eager.trainable_state_dict())
    sides = (8, 8, 12)
    assert _train_flux(compiled, sides) == pytest.approx(_train_flux(eager, sides), rel=LOSS_TOLERANCE)


def test_compiled_blocks_train_as_uncompiled_with_quantised_offloaded_weights(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Compilation beside the memory levers: fp8 frozen UNet weights, half its blocks offloaded, checkpointing."""
    monkeypatch.setattr(regional, "BACKEND", "aot_eager")
    monkeypatch.setenv(regional.CACHE_VARIABLE, str(tmp_path / "cache"))

    def setup(**training: Any) -> DiffusionSetup:
        config = TrainConfig.model_validate(
            {
                "model": {"type": "sd15", "base": "tiny:sd15"},
                "method": "lora",
                "parts": {"unet": {"weight_dtype": "fp8", "offload_blocks": 0.5}},
                "training": {"device": "cpu", "gradient_checkpointing": True, **training},
            }
        )
        built = lookup(ModuleKind.SETUP, "sd15")(copy.deepcopy(_base()), config)
        built.prepare("cpu", torch.float32)
        built.train()
        return built

    from torch._dynamo.utils import counters

    eager, compiled = setup(), setup(compile=True)
    assert eager.offloaders
    counters.clear()
    assert _train(compiled, (8, 8)) == pytest.approx(_train(eager, (8, 8)), rel=LOSS_TOLERANCE)
    graphs = counters["stats"]["unique_graphs"]
    assert graphs > 0
    _train(compiled, (8, 8))
    assert counters["stats"]["unique_graphs"] == graphs  # the offloading hooks run eagerly: no recompilation
