"""The plain step strategy: accumulate, unscale and clip, then one optimizer and schedule step."""

from __future__ import annotations

import torch

from onetrainer.trainer.precision import MixedPrecision
from onetrainer.trainer.step import PlainStep
from onetrainer.util.config.training import Precision


def _strategy(max_grad_norm: float | None) -> tuple[PlainStep, torch.nn.Parameter]:
    weight = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
    optimizer = torch.optim.SGD([weight], lr=0.5)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 / (step + 1))
    precision = MixedPrecision(Precision.FP32, torch.device("cpu"))
    return PlainStep(optimizer, scheduler, precision, [weight], max_grad_norm), weight


def test_accumulated_gradients_are_clipped_then_applied_once() -> None:
    strategy, weight = _strategy(max_grad_norm=1.0)
    for _ in range(2):
        strategy.backward((weight * torch.tensor([3.0, 4.0])).sum() / 2)  # gradient [3, 4] over two batches
    norm = strategy.measure()
    assert norm.item() == 5.0
    assert torch.allclose(weight.grad, torch.tensor([0.6, 0.8]))
    assert strategy.apply() == [0.5]
    assert torch.allclose(weight.detach(), torch.tensor([1.0 - 0.3, -2.0 - 0.4]))
    assert weight.grad is None
    assert strategy.optimizer.param_groups[0]["lr"] == 0.25  # the schedule moved on


def test_without_clipping_the_norm_is_measured_and_the_gradient_kept() -> None:
    strategy, weight = _strategy(max_grad_norm=None)
    strategy.backward((weight * torch.tensor([3.0, 4.0])).sum())
    assert strategy.measure().item() == 5.0
    assert torch.allclose(weight.grad, torch.tensor([3.0, 4.0]))


def test_a_non_finite_gradient_shows_in_the_norm() -> None:
    strategy, weight = _strategy(max_grad_norm=1.0)
    strategy.backward((weight * torch.tensor([float("inf"), 1.0])).sum())
    assert not torch.isfinite(strategy.measure())


def test_gradients_are_averaged_over_ranks_once_per_step_before_clipping() -> None:
    """Accumulation micro-steps do not synchronise; the step's summed gradient is averaged, then clipped."""
    strategy, weight = _strategy(max_grad_norm=1.0)
    seen: list[torch.Tensor] = []

    def average(parameters: list[torch.nn.Parameter]) -> None:
        seen.append(parameters[0].grad.clone())
        parameters[0].grad.mul_(2.0)  # as if the other rank's gradient were three times this one's

    strategy.average = average
    for _ in range(3):
        strategy.backward((weight * torch.tensor([3.0, 4.0])).sum() / 3)
    assert seen == []
    assert strategy.measure().item() == 10.0
    assert len(seen) == 1
    assert torch.allclose(seen[0], torch.tensor([3.0, 4.0]))
    assert torch.allclose(weight.grad, torch.tensor([0.6, 0.8]))


def _fused(precision: Precision = Precision.FP32) -> tuple[PlainStep, torch.nn.Parameter]:
    weight = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
    optimizer = torch.optim.AdamW([weight], lr=0.5, fused=True)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    return PlainStep(optimizer, scheduler, MixedPrecision(precision, torch.device("cpu")), [weight], 1.0), weight


def test_a_fused_optimizer_skips_its_update_by_the_device_flag() -> None:
    strategy, weight = _fused()
    assert strategy.skips_on_device
    assert not _strategy(max_grad_norm=1.0)[0].skips_on_device  # plain SGD cannot
    strategy.backward(weight.sum())
    strategy.measure()
    assert strategy.apply(torch.tensor(1.0)) == [0.5]
    assert torch.equal(weight.detach(), torch.tensor([1.0, -2.0]))
    assert weight.grad is None
    state = strategy.optimizer.state[weight]
    assert float(state["step"]) == 0.0  # a skipped step is not counted
    assert not hasattr(strategy.optimizer, "found_inf")
    strategy.backward(weight.sum())
    strategy.measure()
    strategy.apply(torch.tensor(0.0))
    assert not torch.equal(weight.detach(), torch.tensor([1.0, -2.0]))
    assert float(state["step"]) == 1.0
