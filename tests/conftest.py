"""Shared fixtures: tiny saved models and image folders, built once per session, fully offline.

The offline switches are set at import time, before any test imports huggingface_hub: one uncached
hub lookup without them retries DNS for minutes instead of failing in a second.

Session-scoped folders are shared by every test that asks for them: a test that modifies one must
copy it first (`shutil.copytree`). The tokenizer is rebuilt per test because embedding tests add
tokens to it.
"""

from __future__ import annotations

import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from onetrainer.util.tiny.dataset import make_image_dataset, make_shapes_dataset
from onetrainer.util.tiny.models import save_tiny_model
from onetrainer.util.tiny.tokenizer import build_tiny_clip_tokenizer

if TYPE_CHECKING:
    import torch
    from transformers import CLIPTokenizer

    from onetrainer.model.diffusion import DiffusionModel
    from onetrainer.util.family import FamilySpec


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip `gpu` tests on machines without CUDA; torch is imported only if such a test was collected."""
    gpu_items = [item for item in items if item.get_closest_marker("gpu") is not None]
    if not gpu_items:
        return
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in gpu_items:
        item.add_marker(skip)


def _tiny_model(factory: pytest.TempPathFactory, kind: str) -> Path:
    return save_tiny_model(kind, factory.mktemp("tiny-models") / kind)


@pytest.fixture(scope="session")
def tiny_sd15_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Diffusers folder of the tiny SD 1.5 pipeline (seed 0)."""
    return _tiny_model(tmp_path_factory, "sd15")


@pytest.fixture(scope="session")
def tiny_sd2_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Diffusers folder of the tiny SD 2.x v-prediction pipeline (seed 0)."""
    return _tiny_model(tmp_path_factory, "sd2-v")


@pytest.fixture(scope="session")
def tiny_sd2_eps_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Diffusers folder of the tiny SD 2.x epsilon-prediction pipeline (seed 0)."""
    return _tiny_model(tmp_path_factory, "sd2")


@pytest.fixture(scope="session")
def tiny_sdxl_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Diffusers folder of the tiny SDXL pipeline (seed 0)."""
    return _tiny_model(tmp_path_factory, "sdxl")


@pytest.fixture(scope="session")
def tiny_flux_dev_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Diffusers folder of the tiny FLUX.1-dev pipeline (seed 0)."""
    return _tiny_model(tmp_path_factory, "flux-dev")


@pytest.fixture(scope="session")
def tiny_flux_schnell_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Diffusers folder of the tiny FLUX.1-schnell pipeline (seed 0)."""
    return _tiny_model(tmp_path_factory, "flux-schnell")


@pytest.fixture(scope="session")
def tiny_sd35_large_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Diffusers folder of the tiny SD 3.5 Large pipeline (seed 0)."""
    return _tiny_model(tmp_path_factory, "sd35-large")


@pytest.fixture(scope="session")
def tiny_sd35_medium_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Diffusers folder of the tiny SD 3.5 Medium (MMDiT-X) pipeline (seed 0)."""
    return _tiny_model(tmp_path_factory, "sd35-medium")


@pytest.fixture(scope="session")
def tiny_sd3_medium_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Diffusers folder of the tiny SD 3 Medium pipeline (seed 0)."""
    return _tiny_model(tmp_path_factory, "sd3-medium")


@pytest.fixture(scope="session")
def unregistered_pipeline_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A diffusers folder (configs only) of a made-up architecture, `ZetaImagePipeline` with a
    `ZetaTransformer2DModel`, that no family, registered or to come, makes."""
    root = tmp_path_factory.mktemp("unregistered") / "zeta"
    files = {
        "model_index.json": {
            "_class_name": "ZetaImagePipeline",
            "transformer": ["diffusers", "ZetaTransformer2DModel"],
            "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
        },
        "transformer/config.json": {"_class_name": "ZetaTransformer2DModel", "patch_size": 1},
        "scheduler/scheduler_config.json": {"_class_name": "FlowMatchEulerDiscreteScheduler", "shift": 3.0},
    }
    for name, content in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(json.dumps(content))
    return root


@pytest.fixture
def tiny_tokenizer() -> CLIPTokenizer:
    """A fresh 1514-token CLIP tokenizer."""
    return build_tiny_clip_tokenizer()


@pytest.fixture(scope="session")
def image_dataset_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """8 regular images of mixed size and format, with captions and (for even indices) masks."""
    return make_image_dataset(tmp_path_factory.mktemp("image-dataset"))


@pytest.fixture(scope="session")
def odd_image_dataset_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The regular images plus every file of `ODD_IMAGE_FILES`."""
    return make_image_dataset(tmp_path_factory.mktemp("odd-image-dataset"), odd_images=True)


@pytest.fixture(scope="session")
def shapes_dataset_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """16 captioned 64 px images of coloured shapes."""
    return make_shapes_dataset(tmp_path_factory.mktemp("shapes-dataset"))


@pytest.fixture
def register_test_family(monkeypatch: pytest.MonkeyPatch) -> Callable[[FamilySpec], FamilySpec]:
    """`register_test_family(spec)` makes `spec` a model type for this test only: the family table is a copy
    that the test's end puts back."""
    from onetrainer.util import family

    family.families()  # the real families register (once, into the real table) before it is copied
    monkeypatch.setattr(family, "_families", dict(family._families))
    return family.register_family


@pytest.fixture
def register_unet_test_family(
    register_test_family: Callable[[FamilySpec], FamilySpec],
) -> Callable[..., FamilySpec]:
    """`register_unet_test_family(name, title, *, bucket_step, default_resolution)`: a made-up family built as
    SD 1.x is (a UNet, one text encoder, a VAE; DDPM; LoRA only), registered for this test, with no loader,
    setup or sampler of its own."""
    from onetrainer.util.family import Component, FamilySpec, Objective, Recognisers, Role

    def register(name: str, title: str, *, bucket_step: int, default_resolution: int) -> FamilySpec:
        return register_test_family(
            FamilySpec(
                name=name,
                title=title,
                components=(
                    Component("unet", Role.DENOISER, "UNet", trains_by_default=True),
                    Component("text_encoder", Role.TEXT_ENCODER, "Text encoder", tokenizer="tokenizer"),
                    Component("vae", Role.VAE, "VAE"),
                ),
                objective=Objective.DDPM,
                latent_channels=4,
                bucket_step=bucket_step,
                patch_size=1,
                default_resolution=default_resolution,
                methods=frozenset({"lora"}),
                modelspec_architecture=name,
                kohya_base_model_version=name.replace("-", "_"),
                pipeline_classes=(),
                recognise=Recognisers(),
            )
        )

    return register


@pytest.fixture(scope="session")
def with_random_lora() -> Callable[..., DiffusionModel]:
    """`with_random_lora(model, parts, preset="attn-mlp", rank=4, alpha=2.0, scale=0.2)`: `model` with a LoRA on
    the `preset` layers of `parts`, every factor random (seed 0, times `scale`): a fresh LoRA's up factor is zero,
    so a loader that dropped or misread it would compute the same as the base model."""
    import torch

    from onetrainer.model.adapters.lora import LoraTargets, inject_lora

    def add(
        model: DiffusionModel,
        parts: tuple[str, ...],
        *,
        preset: str = "attn-mlp",
        rank: int = 4,
        alpha: float = 2.0,
        scale: float = 0.2,
    ) -> DiffusionModel:
        targets = {name: LoraTargets(preset, presets=model.spec.component(name).lora_presets) for name in parts}
        model.adapters.lora = inject_lora(model, kind="lora", rank=rank, alpha=alpha, targets=targets)
        generator = torch.Generator().manual_seed(0)
        for name in parts:
            for key, parameter in model.components[name].named_parameters():
                if "lora_" in key:
                    parameter.data = torch.randn(parameter.shape, generator=generator) * scale
        return model

    return add


@dataclass
class PageLocks:
    """What `util.pinned` registered with the CUDA driver (pretended on a CPU), and undid."""

    registered: list[tuple[int, int]]
    unregistered: list[int]

    def holds(self, tensor: torch.Tensor) -> bool:
        """Whether `tensor`'s data lies in a registered range."""
        pointer = tensor.data_ptr()
        return any(start <= pointer < start + length for start, length in self.registered)


@pytest.fixture
def page_locks(monkeypatch: pytest.MonkeyPatch) -> PageLocks:
    """Page-locking without an accelerator: registrations are recorded, and `is_pinned` answers from them."""
    import torch

    from onetrainer.util import pinned

    locks = PageLocks([], [])

    def register(pointer: int, length: int) -> None:
        locks.registered.append((pointer, length))

    monkeypatch.setattr(pinned, "_register", register)
    monkeypatch.setattr(pinned, "_unregister", locks.unregistered.append)
    monkeypatch.setattr(torch.Tensor, "is_pinned", lambda tensor: locks.holds(tensor))
    return locks


@pytest.fixture(scope="session")
def lora_deltas() -> Callable[[dict[str, torch.Tensor], dict[str, float]], dict[str, torch.Tensor]]:
    """`lora_deltas(tensors, alphas)`: each LoRA module's weight change, (alpha / rank) * up @ down (flattened),
    and each DoRA magnitude as it is: what a file computes, whichever factor carries the scale."""
    return _lora_deltas


def _lora_deltas(tensors: dict[str, torch.Tensor], alphas: dict[str, float]) -> dict[str, torch.Tensor]:
    from onetrainer.util.keymaps.lora import split_peft_key

    modules: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in tensors.items():
        module, param = split_peft_key(key)
        modules.setdefault(module, {})[param] = tensor
    deltas: dict[str, torch.Tensor] = {}
    for module, params in modules.items():
        down, up = params["lora_A.weight"].float(), params["lora_B.weight"].float()
        scale = alphas.get(module, down.shape[0]) / down.shape[0]
        deltas[module] = scale * up.flatten(1) @ down.flatten(1)
        if "lora_magnitude_vector" in params:
            deltas[f"{module}.magnitude"] = params["lora_magnitude_vector"]
    return deltas
