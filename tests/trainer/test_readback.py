"""Reading the step's loss and gradient norm back late, with the NaN guard decided on the device."""

from __future__ import annotations

import math

import pytest
import torch

from onetrainer.trainer.readback import RankFailed, StepRecord, StepResults, resolve_lag
from onetrainer.util.errors import UserError


def _results(lag: int, *, tolerates_overflow: bool = False) -> tuple[StepResults, list[StepRecord]]:
    checked: list[StepRecord] = []
    return StepResults(torch.device("cpu"), lag, tolerates_overflow, check=checked.append), checked


def _step(results: StepResults, step: int, loss: float, norm: float = 1.0) -> torch.Tensor | None:
    skip = results.measure(step, torch.tensor(loss), torch.tensor(norm))
    results.finish(0, [0.1])
    return skip


def test_with_a_lag_a_step_is_read_that_many_steps_later_and_everything_on_request() -> None:
    results, checked = _results(2)
    assert _step(results, 1, 0.5) is not None
    assert results.ready() == []
    _step(results, 2, 0.25)
    assert results.ready() == []
    _step(results, 3, 0.125)
    assert [(record.step, record.loss) for record in results.ready()] == [(1, 0.5)]
    assert [record.step for record in checked] == [1]
    assert [(record.step, record.loss) for record in results.ready(everything=True)] == [(2, 0.25), (3, 0.125)]
    assert [record.step for record in checked] == [1, 2, 3]
    assert results.pending == 0


def test_without_a_lag_the_values_are_read_and_checked_before_the_update() -> None:
    results, checked = _results(0)
    assert results.measure(1, torch.tensor(0.5), torch.tensor(2.0)) is None
    assert [(record.step, record.loss, record.grad_norm) for record in checked] == [(1, 0.5, 2.0)]
    assert results.ready() == []  # not finished: the update has not been made
    results.finish(3, [0.1, 0.2], flops=10.0)
    (record,) = results.ready()
    assert (record.epoch, record.learning_rates, record.flops) == (3, [0.1, 0.2], 10.0)
    assert len(checked) == 1  # read once


def test_the_skip_flag_stays_set_from_the_first_diverged_step_on() -> None:
    results, _ = _results(4)
    flags = [
        _step(results, 1, 0.5),
        _step(results, 2, math.nan),
        _step(results, 3, 0.5),
        _step(results, 4, 0.5, math.inf),
    ]
    assert [float(flag) for flag in flags if flag is not None] == [0.0, 1.0, 1.0, 1.0]


def test_under_fp16_an_overflow_skips_only_its_step_and_a_non_finite_loss_every_later_one() -> None:
    results, _ = _results(4, tolerates_overflow=True)
    flags = [
        _step(results, 1, 0.5, math.inf),
        _step(results, 2, 0.5),
        _step(results, 3, math.nan),
        _step(results, 4, 0.5),
    ]
    assert [float(flag) for flag in flags if flag is not None] == [1.0, 0.0, 1.0, 1.0]


def test_a_failed_rank_skips_its_update_and_every_later_one_and_is_raised_when_read() -> None:
    results, checked = _results(2)
    flags = [results.measure(1, torch.tensor(0.5), torch.tensor(1.0))]
    results.finish(0, [0.1])
    flags.append(results.measure(2, torch.tensor(math.nan), torch.tensor(1.0), failed=True))
    results.finish(0, [0.1])
    flags.append(results.measure(3, torch.tensor(0.5), torch.tensor(1.0)))
    results.finish(0, [0.1])
    assert [float(flag) for flag in flags if flag is not None] == [0.0, 1.0, 1.0]
    assert [record.step for record in results.ready()] == [1]
    with pytest.raises(RankFailed) as failed:
        results.ready(everything=True)
    assert (failed.value.step, failed.value.before_update) == (2, False)
    assert [record.step for record in checked] == [1]  # the failure is raised, not checked as a NaN loss

    read_now, checked = _results(0)
    with pytest.raises(RankFailed) as failed:
        read_now.measure(1, torch.tensor(0.5), torch.tensor(1.0), failed=True)
    assert failed.value.before_update
    assert checked == []


def test_a_stop_request_travels_with_its_step_and_is_known_once_read() -> None:
    results, _ = _results(1)
    results.measure(1, torch.tensor(0.5), torch.tensor(1.0), stop=True)
    results.finish(0, [0.1])
    assert not results.stop_read
    results.measure(2, torch.tensor(0.5), torch.tensor(1.0))
    results.finish(0, [0.1])
    (record,) = results.ready()
    assert record.stop
    assert results.stop_read


def test_each_step_reports_the_host_time_since_the_previous_one() -> None:
    times = iter([10.0, 12.5, 13.0])
    results = StepResults(torch.device("cpu"), 0, False, check=lambda record: None, clock=lambda: next(times))
    results.restart_clock()
    _step(results, 1, 0.5)
    _step(results, 2, 0.5)
    assert [record.seconds for record in results.ready(everything=True)] == [2.5, 0.5]


def test_auto_reads_each_step_on_the_cpu_and_a_lag_needs_a_step_that_skips_on_the_device() -> None:
    assert resolve_lag("auto", torch.device("cpu"), skips_on_device=True) == 0
    assert resolve_lag("auto", torch.device("cuda"), skips_on_device=True) == 1
    assert resolve_lag("auto", torch.device("cuda"), skips_on_device=False) == 0
    assert resolve_lag(2, torch.device("cpu"), skips_on_device=True) == 2
    with pytest.raises(UserError, match="read_back_lag=1 needs an optimizer") as error:
        resolve_lag(1, torch.device("cuda"), skips_on_device=False)
    assert error.value.where == "training.read_back_lag"


@pytest.mark.gpu
def test_on_cuda_the_values_arrive_through_pinned_memory_after_an_event() -> None:
    checked: list[StepRecord] = []
    results = StepResults(torch.device("cuda"), 1, False, check=checked.append)
    cuda = torch.device("cuda")
    for step in (1, 2):
        skip = results.measure(step, torch.tensor(0.5 * step, device=cuda), torch.tensor(2.0, device=cuda))
        assert skip is not None
        assert skip.device.type == "cuda"
        results.finish(0, [0.1])
    assert [(record.loss, record.grad_norm) for record in results.ready(everything=True)] == [(0.5, 2.0), (1.0, 2.0)]
