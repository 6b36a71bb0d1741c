"""The moving average: its update rule, interval, swapping into the model, and saving."""

from __future__ import annotations

import torch

from onetrainer.trainer.ema import ModelEma


def _params() -> list[torch.nn.Parameter]:
    return [torch.nn.Parameter(torch.zeros(3)), torch.nn.Parameter(torch.ones(2, 2))]


def test_update_moves_the_average_by_one_minus_decay() -> None:
    params = _params()
    ema = ModelEma(params, decay=0.9)
    with torch.no_grad():
        params[0].fill_(1.0)
    assert ema.update(1)
    assert torch.allclose(ema.shadow[0], torch.full((3,), 0.1))
    assert torch.equal(ema.shadow[1], torch.ones(2, 2))


def test_update_only_every_n_steps() -> None:
    params = _params()
    ema = ModelEma(params, decay=0.5, update_every=3)
    with torch.no_grad():
        params[0].fill_(1.0)
    assert [ema.update(step) for step in range(1, 7)] == [False, False, True, False, False, True]
    assert ema.updates == 2
    assert torch.allclose(ema.shadow[0], torch.full((3,), 0.75))


def test_applied_shows_the_average_then_restores_the_trained_weights() -> None:
    params = _params()
    ema = ModelEma(params, decay=0.9, device=torch.device("cpu"))
    with torch.no_grad():
        params[0].fill_(2.0)
    ema.update(1)
    with ema.applied():
        assert torch.allclose(params[0], torch.full((3,), 0.2))
    assert torch.equal(params[0].detach(), torch.full((3,), 2.0))


def test_state_round_trip_is_exact() -> None:
    params = _params()
    ema = ModelEma(params, decay=0.99)
    with torch.no_grad():
        params[0].uniform_()
    ema.update(1)
    other = ModelEma(_params(), decay=0.99)
    other.load_state_dict(ema.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(ema.shadow, other.shadow, strict=True))
    assert other.updates == 1
