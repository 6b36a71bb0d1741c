"""The moving average: its update rule, interval, swapping into the model, and saving."""

from __future__ import annotations

import pytest
import torch

from onetrainer.trainer.ema import ModelEma


def _params() -> list[torch.nn.Parameter]:
    return [torch.nn.Parameter(torch.zeros(3)), torch.nn.Parameter(torch.ones(2, 2))]


def test_update_moves_the_average_by_one_minus_decay() -> None:
    params = _params()
    ema = ModelEma(params, decay=0.9, warmup=False)
    with torch.no_grad():
        params[0].fill_(1.0)
    assert ema.update(1)
    assert torch.allclose(ema.shadow[0], torch.full((3,), 0.1))
    assert torch.equal(ema.shadow[1], torch.ones(2, 2))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_the_average_of_half_precision_weights_is_kept_in_fp32_and_moves(dtype: torch.dtype) -> None:
    """At decay 0.999 an update moves the average by a thousandth of the weight's step: below half a bf16 step
    of the weight, so a bf16 average would never move (the `sdxl-full-12gb` preset's bf16 weights)."""
    weight = torch.nn.Parameter(torch.ones(4, dtype=dtype))
    ema = ModelEma([weight], decay=0.999, warmup=False)
    with torch.no_grad():
        weight.fill_(1.0078125)  # one bf16 step above 1
    for step in range(1, 101):
        ema.update(step)
    (shadow,) = ema.shadow
    assert shadow.dtype == torch.float32
    expected = 1.0 + 0.0078125 * (1 - 0.999**100)
    assert shadow.tolist() == pytest.approx([expected] * 4, rel=1e-6)
    with ema.applied():
        assert weight.dtype == dtype
        assert torch.equal(weight.detach(), shadow.to(dtype))
    assert torch.equal(weight.detach(), torch.full((4,), 1.0078125, dtype=dtype))


def test_warmup_keeps_little_of_the_start_then_reaches_the_decay() -> None:
    """OneTrainer's rule (diffusers' for an update every step): after optimizer step s, min(decay, s / (9 + s)),
    counted in optimizer steps whatever the update interval."""
    params = _params()
    ema = ModelEma(params, decay=0.999, update_every=5)
    assert ema.decay_at(1) == pytest.approx(0.1)
    with torch.no_grad():
        params[0].fill_(1.0)
    ema.update(5)
    assert torch.allclose(ema.shadow[0], torch.full((3,), 1 - 5 / 14))
    assert ema.decay_at(1000) == pytest.approx(1000 / 1009)
    assert ema.decay_at(9000) == 0.999  # s / (9 + s) passes the decay after 8,991 steps
    for step in range(10, 1001, 5):
        ema.update(step)
    assert 0.99 < ema.shadow[0][0].item() <= 1.0  # without warm-up: 1 - 0.999**200 = 0.18
    assert ModelEma(_params(), decay=0.999, warmup=False).decay_at(1) == 0.999


def test_update_only_every_n_steps() -> None:
    params = _params()
    ema = ModelEma(params, decay=0.5, update_every=3, warmup=False)
    with torch.no_grad():
        params[0].fill_(1.0)
    assert [ema.update(step) for step in range(1, 7)] == [False, False, True, False, False, True]
    assert ema.updates == 2
    assert torch.allclose(ema.shadow[0], torch.full((3,), 0.75))


def test_applied_shows_the_average_then_restores_the_trained_weights() -> None:
    params = _params()
    ema = ModelEma(params, decay=0.9, warmup=False, device=torch.device("cpu"))
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


def test_an_average_in_cpu_memory_of_many_tensors_is_updated_chunk_by_chunk_as_in_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Copies for an average in CPU memory are taken a chunk at a time (one wait for the GPU per chunk); the
    chunks cover every tensor once, and the result is the same."""
    from onetrainer.trainer import ema as ema_module

    params = [torch.nn.Parameter(torch.full((256,), float(index))) for index in range(10)]  # 1 KiB each
    reference = ModelEma(params, decay=0.5, warmup=False)
    chunked = ModelEma(params, decay=0.5, warmup=False, device=torch.device("cpu"))
    with torch.no_grad():
        for param in params:
            param.add_(1.0)
    reference.update(1)  # all in one go, everything on the CPU
    on_gpu = {id(param) for param in params}
    monkeypatch.setattr(torch.Tensor, "is_cuda", property(lambda tensor: id(tensor) in on_gpu))  # as if on a GPU
    waits: list[object] = []

    class Stream:
        def synchronize(self) -> None:
            waits.append(self)

    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: Stream())
    monkeypatch.setattr(ema_module, "CHUNK_BYTES", 3 * 1024)
    assert [len(chunk) for chunk in chunked._chunks()] == [3, 3, 3, 1]
    chunked.update(1)
    assert all(torch.equal(a, b) for a, b in zip(reference.shadow, chunked.shadow, strict=True))
    assert torch.equal(chunked.shadow[4], torch.full((256,), 4.5))
    assert len(waits) == 4, "one wait per chunk"
