"""Where sampling runs the parts of a model: the text encoders and the VAE go to the denoiser's device only while
they run and come back (a cached run keeps them in CPU memory), a part split across devices stays as it is, and
a decode without the memory for it runs in CPU memory."""

from __future__ import annotations

import copy
import functools
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from onetrainer.model.diffusion import DiffusionModel
from onetrainer.model_loader.pipeline import load_model
from onetrainer.model_sampler import pipeline
from onetrainer.model_sampler.pipeline import decode_latents, moved_to
from onetrainer.util.registry import ModuleKind, lookup


@functools.cache
def _base(kind: str) -> DiffusionModel:
    return load_model(f"tiny:{kind}")


def test_moved_to_takes_components_there_and_back_and_leaves_a_split_one_alone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    split = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 2).to("meta"))
    model: Any = SimpleNamespace(components={"encoder": torch.nn.Linear(2, 2), "split": split})
    names = {id(module): name for name, module in model.components.items()}
    moves: list[tuple[str, str]] = []
    monkeypatch.setattr(pipeline, "place", lambda module, device: moves.append((names[id(module)], str(device))))
    with moved_to(model, ["encoder", "split"], torch.device("cuda", 1)):
        assert moves == [("encoder", "cuda:1")]
    assert moves == [("encoder", "cuda:1"), ("encoder", "cpu")]


@pytest.mark.parametrize("kind", ["sd15", "sdxl", "flux-dev"])
def test_a_preview_takes_the_encoders_and_the_vae_to_the_device_only_while_they_run(
    kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = copy.deepcopy(_base(kind))
    moves: list[tuple[str, str]] = []
    names = {id(module): name for name, module in model.modules()}
    original = pipeline.place

    def place(module: torch.nn.Module, device: Any, dtype: Any = None) -> None:
        if id(module) in names:
            moves.append((names[id(module)], str(device)))
        original(module, device, dtype)

    monkeypatch.setattr(pipeline, "place", place)
    sampler = lookup(ModuleKind.SAMPLER, model.spec.name)(model, layer_skip={})
    sampler.sample("a red circle", steps=1, cfg=1.0, width=64, height=64)

    encoders = model.text_encoder_names()
    vae = model.spec.vae.name
    there, back = [(name, str(model.device)) for name in encoders], [(name, "cpu") for name in encoders]
    assert moves == [*there, *back, (vae, str(model.device)), (vae, "cpu")], "the denoiser is never moved"


def test_a_decode_without_the_memory_for_it_runs_in_cpu_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    model = copy.deepcopy(_base("sdxl"))
    vae = model.components["vae"]
    latents = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = decode_latents(model, latents)
    decode = vae.decode
    calls: list[str] = []

    def out_of_memory_once(*args: Any, **kwargs: Any) -> Any:
        calls.append(next(vae.parameters()).device.type)
        if len(calls) == 1:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory")
        return decode(*args, **kwargs)

    monkeypatch.setattr(vae, "decode", out_of_memory_once)
    with torch.no_grad():
        image = decode_latents(model, latents)
    assert calls == ["cpu", "cpu"]
    assert image.tobytes() == expected.tobytes()
