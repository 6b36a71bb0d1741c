"""Cadences fire at the right steps: every N steps, every N (or a fraction of an) epoch, every N minutes."""

from __future__ import annotations

from onetrainer.trainer.cadence import CadenceClock
from onetrainer.util.config.types import Cadence, CadenceUnit


def _fired(cadence: Cadence, steps: int, steps_per_epoch: int = 5) -> list[int]:
    clock = CadenceClock(cadence, steps_per_epoch)
    ends = {step: step // steps_per_epoch - 1 for step in range(steps_per_epoch, steps + 1, steps_per_epoch)}
    return [step for step in range(1, steps + 1) if clock.due(step, epoch_ended=ends.get(step))]


def test_step_cadence() -> None:
    assert _fired(Cadence(3, CadenceUnit.STEP), 10) == [3, 6, 9]


def test_epoch_cadence_fires_at_the_last_step_of_the_epoch() -> None:
    assert _fired(Cadence(1, CadenceUnit.EPOCH), 12) == [5, 10]
    assert _fired(Cadence(2, CadenceUnit.EPOCH), 20) == [10, 20]
    assert _fired(Cadence(0.4, CadenceUnit.EPOCH), 10) == [2, 4, 6, 8, 10]


def test_epoch_cadence_follows_epochs_of_different_lengths() -> None:
    clock = CadenceClock(Cadence(1, CadenceUnit.EPOCH), 3)
    ends = {3: 0, 7: 1, 10: 2}
    assert [step for step in range(1, 11) if clock.due(step, epoch_ended=ends.get(step))] == [3, 7, 10]


def test_never_never_fires() -> None:
    clock = CadenceClock(Cadence(0, CadenceUnit.NEVER), 5)
    assert not clock.enabled
    assert _fired(Cadence(0, CadenceUnit.NEVER), 50) == []


def test_minute_cadence_follows_the_clock_and_survives_a_resume() -> None:
    now = [0.0]
    clock = CadenceClock(Cadence(2, CadenceUnit.MINUTE), 5, clock=lambda: now[0])
    now[0] = 119.0
    assert not clock.due(1)
    now[0] = 120.0
    assert clock.due(2)
    clock.fired()
    now[0] = 200.0
    state = clock.state_dict()
    later = [1000.0]
    resumed = CadenceClock(Cadence(2, CadenceUnit.MINUTE), 5, clock=lambda: later[0])
    resumed.load_state_dict(state)
    later[0] = 1039.0
    assert not resumed.due(3)
    later[0] = 1040.0
    assert resumed.due(4)
