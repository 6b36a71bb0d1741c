"""Graceful stop on SIGINT/SIGTERM: the first one asks the loop to stop, a second SIGINT aborts.

Killing a run mid-step would lose everything since the last backup, so the first signal only raises a
flag; the loop finishes the optimizer step, writes a backup and exits. After the last step the flag
no longer stops anything early: the output is written, since that is what the run was for. The
handlers stay installed from the first step to the end of the run for that reason. If stopping takes
too long for the user, a second Ctrl-C raises `KeyboardInterrupt` at once; every file write is
atomic, so the abort leaves no partial file behind, and the trainer names the newest backup.

A rank under torchrun (RANK set) aborts on a second signal of either kind: torchrun passes the first
Ctrl-C on as it came, but a second one reaches the ranks as SIGTERM, and they have said "press Ctrl-C
again to abort at once". One that comes within `REPEAT_GRACE_S` of the first is the same request
delivered twice, not a second one: a scheduler that signals every process of a job (Slurm's scancel)
reaches a rank directly and through torchrun, milliseconds apart. In one process a repeated SIGTERM (a
scheduler insisting) changes nothing: the stop it asked for is under way.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from types import FrameType, TracebackType
from typing import Any

_HANDLED = (signal.SIGINT, signal.SIGTERM)

REPEAT_GRACE_S = 1.0
"""A rank takes a signal this soon after the first for the same request, delivered twice (see above)."""


class StopSignals:
    """Context manager that owns SIGINT/SIGTERM while the training loop runs.

    Handlers can only be installed from the main thread; elsewhere (a trainer driven from a worker
    thread) the block runs with the default behaviour and `requested` stays None.
    """

    def __init__(self) -> None:
        self.requested: str | None = None
        self._previous: dict[int, Any] = {}
        self._as_rank = "RANK" in os.environ
        """A torchrun rank: a second signal of either kind aborts (see the module docstring)."""
        self._requested_at = 0.0

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.requested is None:
            self.requested = signal.Signals(signum).name
            self._requested_at = time.monotonic()
        elif self._as_rank:
            if time.monotonic() - self._requested_at >= REPEAT_GRACE_S:
                raise KeyboardInterrupt
        elif signum == signal.SIGINT:
            raise KeyboardInterrupt

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for signum in _HANDLED:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()
