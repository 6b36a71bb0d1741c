"""Mixed precision: pass-through in fp32, autocast dtypes, and fp16 loss scaling with skipped steps."""

from __future__ import annotations

import torch

from onetrainer.trainer.precision import MixedPrecision
from onetrainer.util.config.training import Precision

CPU = torch.device("cpu")


def _model_and_optimizer() -> tuple[torch.nn.Linear, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 2)
    return model, torch.optim.SGD(model.parameters(), lr=0.1)


def test_fp32_is_a_plain_backward_and_step() -> None:
    model, optimizer = _model_and_optimizer()
    precision = MixedPrecision(Precision.FP32, CPU)
    with precision.autocast():
        loss = model(torch.ones(1, 4)).sum()
    assert loss.dtype == torch.float32
    precision.backward(loss)
    precision.unscale(optimizer)
    before = model.weight.detach().clone()
    assert precision.step(optimizer)
    assert not torch.equal(before, model.weight)
    assert precision.state_dict() == {}


def test_bf16_autocasts_the_forward_pass_and_keeps_fp32_weights() -> None:
    model, _ = _model_and_optimizer()
    precision = MixedPrecision(Precision.BF16, CPU)
    with precision.autocast():
        out = model(torch.ones(1, 4))
    assert out.dtype == torch.bfloat16
    assert model.weight.dtype == torch.float32
    assert precision.scaler is None


def test_fp16_scales_the_loss_and_unscales_the_gradient() -> None:
    model, optimizer = _model_and_optimizer()
    precision = MixedPrecision(Precision.FP16, CPU)
    loss = model(torch.ones(1, 4)).sum()
    precision.backward(loss)
    scale = precision.scaler.get_scale()
    assert torch.allclose(model.weight.grad, torch.full_like(model.weight, scale))
    precision.unscale(optimizer)
    assert torch.allclose(model.weight.grad, torch.ones_like(model.weight))
    assert precision.step(optimizer)


def test_fp16_skips_a_step_whose_gradients_overflowed() -> None:
    model, optimizer = _model_and_optimizer()
    precision = MixedPrecision(Precision.FP16, CPU)
    loss = model(torch.ones(1, 4)).sum() * float("inf")
    precision.backward(loss)
    before = model.weight.detach().clone()
    scale = precision.scaler.get_scale()
    assert not precision.step(optimizer)
    assert torch.equal(before, model.weight)
    assert precision.scaler.get_scale() == scale / 2


def test_scaler_state_round_trips() -> None:
    model, optimizer = _model_and_optimizer()
    precision = MixedPrecision(Precision.FP16, CPU)
    precision.backward(model(torch.ones(1, 4)).sum() * float("inf"))
    precision.step(optimizer)
    other = MixedPrecision(Precision.FP16, CPU)
    other.load_state_dict(precision.state_dict())
    assert other.scaler.get_scale() == precision.scaler.get_scale() == 32768.0


def _fused() -> tuple[torch.nn.Linear, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1)
    return model, torch.optim.AdamW(model.parameters(), lr=0.1, fused=True)


def test_fp16_decides_a_skipped_step_on_the_device_and_still_lowers_the_scale() -> None:
    model, optimizer = _fused()
    precision = MixedPrecision(Precision.FP16, CPU)
    precision.backward(model(torch.ones(1, 4)).sum() * float("inf"))
    precision.unscale(optimizer)
    before = model.weight.detach().clone()
    scale = precision.scaler.get_scale()
    precision.step_unless(optimizer, torch.tensor(1.0))
    assert torch.equal(before, model.weight)
    assert precision.scaler.get_scale() == scale / 2
    optimizer.zero_grad()
    precision.backward(model(torch.ones(1, 4)).sum())
    precision.unscale(optimizer)
    precision.step_unless(optimizer, torch.tensor(0.0))
    assert not torch.equal(before, model.weight)
