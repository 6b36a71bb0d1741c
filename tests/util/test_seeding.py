"""RNG capture and restore: every global generator continues exactly, through weights_only loading."""

from __future__ import annotations

import io
import random

import numpy as np
import torch

from onetrainer.util.seeding import capture_rng_state, preserved_rng, restore_rng_state, seed_everything


def _draw() -> tuple[float, float, float]:
    return random.random(), float(np.random.rand()), float(torch.rand(1))


def test_seed_everything_is_deterministic() -> None:
    seed_everything(7)
    first = _draw()
    seed_everything(7)
    assert _draw() == first


def test_restored_state_repeats_the_same_draws_after_a_weights_only_round_trip() -> None:
    seed_everything(3)
    _draw()
    state = capture_rng_state()
    expected = [_draw() for _ in range(3)]
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=True)
    seed_everything(99)
    restore_rng_state(loaded)
    assert [_draw() for _ in range(3)] == expected


def test_preserved_rng_hides_side_activity_from_the_main_streams() -> None:
    seed_everything(5)
    expected = _draw()
    seed_everything(5)
    with preserved_rng():
        _draw()
        torch.randn(100)
    assert _draw() == expected
