"""What the cache holds does not depend on which entries were encoded together (`row_by_row_on_cpu`)."""

from __future__ import annotations

import pytest
import torch

from onetrainer.model_loader.pipeline import load_model
from onetrainer.model_setup.encoders import VaeImageEncoder, row_by_row_on_cpu
from onetrainer.util.config.loader import validate
from onetrainer.util.registry import ModuleKind, lookup


def test_a_cached_latent_is_the_same_whatever_images_share_its_encoder_call() -> None:
    """On the CPU an image encoded beside others differs from the same image alone in the last bits, so a cache
    filled in two sittings (an interrupted fill, another `data.encode_batch_size`) gave other weights."""
    model = load_model("tiny:sd15")
    encoder = VaeImageEncoder(model.vae, torch.device("cpu"), torch.float32)
    encoder.load()
    images = torch.rand(5, 3, 64, 64, generator=torch.Generator().manual_seed(0)) * 2 - 1
    together = encoder.encode(images)["latents"]
    alone = torch.cat([encoder.encode(images[row : row + 1])["latents"] for row in range(5)])
    assert torch.equal(together, alone)
    assert torch.equal(encoder.encode(images[1:4])["latents"], alone[1:4])


def test_cached_text_is_the_same_whatever_captions_share_its_encoder_call() -> None:
    setup = lookup(ModuleKind.SETUP, "sdxl")(
        load_model("tiny:sdxl"), validate({"model": {"type": "sdxl", "base": "tiny:sdxl"}}, check_paths=False)
    )
    setup.prepare("cpu", torch.float32)
    conditioner = setup.text_encoder()
    assert conditioner is not None
    conditioner.load()
    captions = ["a red circle", "a blue square on a wooden table", "x", "a photo of a cat"]
    together = conditioner.encode(captions)
    for row, caption in enumerate(captions):
        alone = conditioner.encode([caption])
        assert all(torch.equal(together[key][row : row + 1], alone[key]) for key in together)


@pytest.mark.parametrize("device", ["cpu", "meta"])
def test_rows_are_encoded_one_by_one_only_on_the_cpu(device: str) -> None:
    calls: list[slice] = []

    def encode(rows: slice) -> dict[str, torch.Tensor]:
        calls.append(rows)
        return {"x": torch.arange(3)[rows]}

    assert torch.equal(row_by_row_on_cpu(torch.device(device), 3, encode)["x"], torch.arange(3))
    assert len(calls) == (3 if device == "cpu" else 1)
