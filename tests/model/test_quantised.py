"""fp8 storage of weights that are fp8 already (a checkpoint stored in e4m3): their values are kept, not
quantised a second time."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("torchao")


def _layer(weight: torch.Tensor) -> torch.nn.Linear:
    layer = torch.nn.Linear(weight.shape[1], weight.shape[0])
    with torch.no_grad():
        layer.weight.copy_(weight)
    return layer


def test_weights_on_the_e4m3_grid_keep_their_values() -> None:
    from onetrainer.model.quantised import quantise_linear

    stored = (torch.randn(32, 64, generator=torch.Generator().manual_seed(0)) * 0.05).to(torch.float8_e4m3fn)
    quantised = quantise_linear(_layer(stored.float()), "fp8", torch.bfloat16)
    assert torch.equal(quantised.weight.dequantize().float(), stored.float())


def test_other_weights_are_quantised_with_a_scale_per_row() -> None:
    from onetrainer.model.quantised import quantise_linear

    weight = torch.randn(32, 64, generator=torch.Generator().manual_seed(0))
    quantised = quantise_linear(_layer(weight), "fp8", torch.bfloat16)
    assert not torch.all(quantised.weight.scale == 1)
    relative = (quantised.weight.dequantize().float() - weight).abs().max() / weight.abs().max()
    assert relative < 0.07
