"""Tiny models carrying trained-looking adapters, and fixed inputs to compare models' outputs on."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from onetrainer.model.stable_diffusion import StableDiffusionModel
from onetrainer.model_loader.stable_diffusion import load_stable_diffusion

ADAPTER_PARAMS = ("lora_A", "lora_B", "hada_", "lokr_")
PROMPT = "a photo of a cat"


def randomize_adapter(model: StableDiffusionModel, seed: int = 0) -> None:
    """A fresh adapter changes nothing (its up factor is zero); give every factor small random values,
    and every DoRA magnitude its own value within 20 % of its start, so a loader that drops them shows."""
    generator = torch.Generator().manual_seed(seed)
    for component in ("unet", "text_encoder"):
        for name, parameter in getattr(model, component).named_parameters():
            if any(marker in name for marker in ADAPTER_PARAMS):
                parameter.data = torch.randn(parameter.shape, generator=generator) * 0.1
            elif "lora_magnitude_vector" in name:
                parameter.data = parameter.data * (1 + 0.2 * torch.randn(parameter.shape, generator=generator))


@pytest.fixture
def lora_model(tiny_sd15_dir: Path) -> Callable[..., StableDiffusionModel]:
    """`lora_model(kind, alpha=8.0, fmt="kohya")`: tiny SD 1.5 with a rank-4 adapter on the UNet and text
    encoder; a DoRA keeps its magnitudes on the axis the output format `fmt` needs."""
    from onetrainer.model.adapters.dora import dora_axis
    from onetrainer.model.adapters.lora import inject_lora

    def build(kind: str = "lora", alpha: float = 8.0, fmt: str = "kohya") -> StableDiffusionModel:
        model = load_stable_diffusion(tiny_sd15_dir)
        adapter = inject_lora(
            model, kind=kind, rank=4, alpha=alpha, components=("unet", "text_encoder"), dora_axis=dora_axis(fmt)
        )
        model.adapters["lora"] = adapter
        randomize_adapter(model)
        return model

    return build


def _prediction(unet: torch.nn.Module, text_encoder: torch.nn.Module, tokenizer, prompt: str = PROMPT) -> torch.Tensor:
    generator = torch.Generator().manual_seed(1)
    latents = torch.randn(1, 4, 8, 8, generator=generator)
    ids = tokenizer(prompt, padding="max_length", max_length=77, return_tensors="pt").input_ids
    with torch.no_grad():
        context = text_encoder(ids)[0]
        return unet(latents, 500, context).sample


@pytest.fixture
def prediction() -> Callable[..., torch.Tensor]:
    """`prediction(unet, text_encoder, tokenizer, prompt)`: the denoiser's output for fixed latents and
    timestep. Equal predictions mean the two models (UNet and text encoder) compute the same thing."""
    return _prediction


def _readme_loads_in(what: str, fmt: str) -> str:
    readme = Path(__file__).resolve().parents[2] / "README.md"
    for line in readme.read_text(encoding="utf-8").splitlines():
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        if len(cells) == 3 and cells[0] == what and cells[1].startswith(f"`{fmt}`"):
            return cells[2]
    raise AssertionError(f"no README output-format row for {what} as {fmt}")


@pytest.fixture
def readme_loads_in() -> Callable[[str, str], str]:
    """`readme_loads_in(what, fmt)`: the "loads in" cell of the README's output-format table, so tests that
    pin what a loader does with our files also keep the table saying so."""
    return _readme_loads_in
