"""Learning-rate schedules: exact factors at known steps, warm-up in steps or as a fraction."""

from __future__ import annotations

import math

import pytest
import torch

from onetrainer.trainer.schedulers import build_lr_scheduler, lr_factor, resolve_warmup_steps
from onetrainer.util.config.training import LrScheduler, Optimizer, TrainingConfig
from onetrainer.util.errors import UserError


def _lrs(config: TrainingConfig, total: int) -> list[float]:
    param = torch.nn.Parameter(torch.zeros(2))
    optimizer = torch.optim.SGD([param], lr=config.learning_rate)
    scheduler = build_lr_scheduler(optimizer, config, total)
    seen = []
    for _ in range(total):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return seen


def test_warmup_counts_steps_or_a_fraction_of_the_run() -> None:
    assert resolve_warmup_steps(10, 100) == 10
    assert resolve_warmup_steps(0.25, 100) == 25
    assert resolve_warmup_steps(0, 100) == 0
    assert resolve_warmup_steps(500, 100) == 100


def test_warmup_rises_linearly_without_a_zero_step() -> None:
    factors = [lr_factor(LrScheduler.CONSTANT, step, 100, 4) for step in range(6)]
    assert factors == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        (LrScheduler.CONSTANT, [1.0, 1.0, 1.0, 1.0]),
        (LrScheduler.LINEAR, [1.0, 0.75, 0.5, 0.25]),
        (LrScheduler.COSINE, [1.0, 0.5 * (1 + math.cos(math.pi / 4)), 0.5, 0.5 * (1 + math.cos(3 * math.pi / 4))]),
        (LrScheduler.POLYNOMIAL, [1.0, 0.75**2, 0.5**2, 0.25**2]),
    ],
)
def test_decaying_schedules_follow_their_formula(kind: LrScheduler, expected: list[float]) -> None:
    factors = [lr_factor(kind, step, 4, 0, power=2.0) for step in range(4)]
    assert factors == pytest.approx(expected)


def test_cosine_with_restarts_returns_to_the_top_each_cycle() -> None:
    factors = [lr_factor(LrScheduler.COSINE_WITH_RESTARTS, step, 8, 0, cycles=2) for step in range(8)]
    assert factors[0] == pytest.approx(1.0)
    assert factors[4] == pytest.approx(1.0)
    assert factors[2] == pytest.approx(0.5)
    assert factors[3] < factors[2]


def test_min_factor_is_the_floor() -> None:
    assert lr_factor(LrScheduler.LINEAR, 10, 10, 0, min_factor=0.1) == pytest.approx(0.1)
    assert lr_factor(LrScheduler.COSINE, 5, 10, 0, min_factor=0.2) == pytest.approx(0.6)


@pytest.mark.parametrize("kind", list(LrScheduler))
def test_every_scheduler_builds_and_steps_the_optimizer(kind: LrScheduler) -> None:
    config = TrainingConfig(lr_scheduler=kind, learning_rate=0.1, warmup=2)
    lrs = _lrs(config, 10)
    assert lrs[0] == pytest.approx(0.05)
    assert lrs[1] == pytest.approx(0.1)
    if kind is not LrScheduler.CONSTANT:
        assert lrs[-1] < 0.1


def test_resumed_scheduler_continues_at_the_same_learning_rate() -> None:
    config = TrainingConfig(lr_scheduler=LrScheduler.COSINE, learning_rate=0.1, warmup=0.1)
    straight = _lrs(config, 20)
    param = torch.nn.Parameter(torch.zeros(2))
    optimizer = torch.optim.SGD([param], lr=0.1)
    scheduler = build_lr_scheduler(optimizer, config, 20)
    for _ in range(7):
        optimizer.step()
        scheduler.step()
    state = (optimizer.state_dict(), scheduler.state_dict())
    fresh_param = torch.nn.Parameter(torch.zeros(2))
    fresh_optimizer = torch.optim.SGD([fresh_param], lr=0.1)
    fresh_scheduler = build_lr_scheduler(fresh_optimizer, config, 20)
    fresh_optimizer.load_state_dict(state[0])
    fresh_scheduler.load_state_dict(state[1])
    assert fresh_optimizer.param_groups[0]["lr"] == straight[7]


def test_schedule_free_refuses_a_decaying_schedule() -> None:
    config = TrainingConfig(optimizer=Optimizer.SCHEDULE_FREE_ADAMW, lr_scheduler=LrScheduler.COSINE)
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    with pytest.raises(UserError, match="schedule-free"):
        build_lr_scheduler(optimizer, config, 10)
