"""When recurring work (previews, backups, saves, validation) is due, checked after every optimizer step.

"Every 2 epochs" fires at the step that ends every second epoch (epochs may differ in length, e.g.
with `repeats: 0.5`); a fractional epoch cadence ("every 0.5 epochs") becomes a step interval from
the length of the first epoch. Minute cadences use a monotonic clock; their elapsed time is part of
a backup, so a resumed run keeps the rhythm of the interrupted one.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from onetrainer.util.config.types import Cadence, CadenceUnit


class CadenceClock:
    def __init__(self, cadence: Cadence, steps_per_epoch: int, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.cadence = cadence
        self._clock = clock
        self._last = clock()
        self.interval: int | None = None
        if cadence.unit is CadenceUnit.STEP:
            self.interval = max(1, round(cadence.every))
        elif cadence.unit is CadenceUnit.EPOCH and not float(cadence.every).is_integer():
            self.interval = max(1, round(cadence.every * steps_per_epoch))

    @property
    def enabled(self) -> bool:
        return self.cadence.unit is not CadenceUnit.NEVER

    def due(self, step: int, *, epoch_ended: int | None = None) -> bool:
        """Whether the work is due after optimizer step `step` (1-based), which may end epoch `epoch_ended`."""
        if self.interval is not None:
            return step % self.interval == 0
        if self.cadence.unit is CadenceUnit.EPOCH:
            return epoch_ended is not None and (epoch_ended + 1) % round(self.cadence.every) == 0
        if self.cadence.unit is CadenceUnit.MINUTE:
            return self._clock() - self._last >= self.cadence.every * 60.0
        return False

    def fired(self) -> None:
        """Restart the minute timer: the next run is due a full period after this one."""
        self._last = self._clock()

    def state_dict(self) -> dict[str, Any]:
        return {"elapsed": self._clock() - self._last}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._last = self._clock() - float(state["elapsed"])
