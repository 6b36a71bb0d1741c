"""SIGINT/SIGTERM: the first asks to stop, a second SIGINT (on a torchrun rank: any second signal) aborts, handlers
are restored after."""

from __future__ import annotations

import os
import signal

import pytest

from onetrainer.trainer import signals
from onetrainer.trainer.signals import StopSignals


def test_first_signal_only_sets_the_flag() -> None:
    with StopSignals() as stop:
        assert stop.requested is None
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.requested == "SIGTERM"


def test_second_sigint_raises_keyboard_interrupt_at_once() -> None:
    with StopSignals() as stop:
        os.kill(os.getpid(), signal.SIGINT)
        assert stop.requested == "SIGINT"
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)


def test_previous_handlers_come_back() -> None:
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    with StopSignals():
        assert signal.getsignal(signal.SIGINT) is not before[0]
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before


def test_a_repeated_sigterm_does_not_abort_one_process(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RANK", raising=False)
    with StopSignals() as stop:
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.requested == "SIGTERM"


@pytest.mark.parametrize(("first", "second"), [(signal.SIGINT, signal.SIGTERM), (signal.SIGTERM, signal.SIGTERM)])
def test_a_torchrun_rank_aborts_on_a_second_signal_of_any_kind(
    monkeypatch: pytest.MonkeyPatch, first: signal.Signals, second: signal.Signals
) -> None:
    """torchrun passes a second Ctrl-C on to the ranks as SIGTERM: it aborts, as a second Ctrl-C does."""
    monkeypatch.setenv("RANK", "1")
    now = [100.0]
    monkeypatch.setattr(signals.time, "monotonic", lambda: now[0])
    with StopSignals() as stop:
        os.kill(os.getpid(), first)
        assert stop.requested == first.name
        now[0] += signals.REPEAT_GRACE_S
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), second)


def test_a_torchrun_rank_takes_one_signal_delivered_twice_at_once_for_one_request(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A scheduler's SIGTERM to every process of the job reaches a rank directly and through torchrun."""
    monkeypatch.setenv("RANK", "1")
    with StopSignals() as stop:
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.requested == "SIGTERM"
