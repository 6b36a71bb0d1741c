"""Render the trainer's progress events: rich bars, plain periodic lines, or JSON lines.

The trainer reports progress as plain dicts with an `event` key (it cannot import `ui/`), so the
same stream feeds all three displays:

- `cache` {stage, done, total}: preparing the data (scan, hash, cache-images, cache-text, prune);
- `start` {step, total_steps, epochs, steps_per_epoch}: the loop begins (step > 0 after a resume);
- `step` {step, total_steps, epoch, epochs, loss, smoothed_loss, grad_norm, lr, steps_per_s,
  images_per_s, flops_per_s, mfu, eta_s, memory_kind, memory_allocated_gb, memory_peak_gb}: after each
  optimizer step, as it is read back from the device (memory is the GPU's, or with `memory_kind`
  "ram" the process's resident memory; `flops_per_s` and `mfu`, the model FLOP utilisation, are
  one device's, null where not known; `images_per_s` counts every rank's images);
- anything else (`status`, `compiled` {step, seconds}, `sample`, `validation`, `backup`, `save`,
  `stopped`, `done`) carries a human-readable `message` and is shown as one line.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Callable, Iterable
from types import TracebackType
from typing import IO, TYPE_CHECKING, Any, Protocol

from rich.console import Console, RenderableType
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn
from rich.table import Column
from rich.text import Text

if TYPE_CHECKING:
    from typing_extensions import Self

Event = dict[str, Any]


def format_duration(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        return "-:--:--"
    seconds = round(seconds)
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def _number(value: Any, spec: str) -> str:
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        return "-"
    return format(value, spec)


def format_stats(event: Event, *, eta: bool = True) -> str:
    """One line of step statistics: loss, smoothed loss, learning rate, speed, ETA and memory in use."""
    rates = event.get("lr") or {}
    lr_text = " ".join(f"{_number(rate, '.2e')}" for rate in rates.values()) if rates else "-"
    parts = [
        f"loss {_number(event.get('loss'), '.4f')} (avg {_number(event.get('smoothed_loss'), '.4f')})",
        f"lr {lr_text}",
        f"{_number(event.get('steps_per_s'), '.2f')} steps/s",
        f"{_number(event.get('images_per_s'), '.1f')} img/s",
    ]
    if (flops := _flops_text(event)) is not None:
        parts.append(flops)
    if eta:
        parts.append(_eta_text(event))
    if event.get("memory_allocated_gb") is not None:
        allocated = _number(event["memory_allocated_gb"], ".1f")
        peak = _number(event.get("memory_peak_gb"), ".1f")
        label = "RAM" if event.get("memory_kind") == "ram" else "GPU"
        parts.append(f"{label} {allocated}/{peak} GiB")
    return " · ".join(parts)


def _flops_text(event: Event) -> str | None:
    """FLOP/s in the largest unit under a thousand, and the model FLOP utilisation where the device's peak is known."""
    rate = event.get("flops_per_s")
    if not isinstance(rate, (int, float)) or not math.isfinite(rate) or rate <= 0:
        return None
    for unit, scale in (("PFLOP/s", 1e15), ("TFLOP/s", 1e12), ("GFLOP/s", 1e9), ("MFLOP/s", 1e6)):
        if rate >= scale or unit == "MFLOP/s":
            text = f"{rate / scale:.1f} {unit}"
            break
    mfu = event.get("mfu")
    if isinstance(mfu, (int, float)) and math.isfinite(mfu):
        text += f" (MFU {mfu * 100:.1f} %)"
    return text


def _eta_text(event: Event) -> str:
    return f"ETA {format_duration(event.get('eta_s'))}"


def _epoch_text(event: Event) -> str:
    epochs = event.get("epochs")
    epoch = int(event.get("epoch", 0)) + 1
    return f"epoch {epoch}/{epochs}" if epochs else f"epoch {epoch}"


def _stage_text(event: Event) -> str:
    stage = event.get("stage")
    return f"caching: {stage}" if stage else "caching"


def _json_safe(value: Any) -> Any:
    """Strict JSON has no NaN or infinity: they become null so any parser reads the line."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(item) for item in value]
    return value


class Display(Protocol):
    """A progress display: called with each event, used as a context manager around the run."""

    def __call__(self, event: Event) -> None: ...

    def __enter__(self) -> Display: ...

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None: ...


class _Stateless:
    """The context-manager half of a display that has nothing to start or stop."""

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        return None


class JsonDisplay(_Stateless):
    """Exactly one JSON object per line, and nothing else, on `stream`."""

    def __init__(self, stream: IO[str] | None = None) -> None:
        self.stream = stream

    def __call__(self, event: Event) -> None:
        stream = self.stream or sys.stdout
        stream.write(json.dumps(_json_safe(event), separators=(",", ":")) + "\n")
        stream.flush()


class PlainDisplay(_Stateless):
    """Unstyled lines for logs: every message, and a step line at most every `interval_s` seconds."""

    def __init__(
        self,
        write: Callable[[str], None] | None = None,
        *,
        interval_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._write = write
        self.interval_s = interval_s
        self._clock = clock
        self._last_step_line: float | None = None
        self._last_cache_line: float | None = None

    def _emit(self, line: str) -> None:
        if self._write is not None:
            self._write(line)
        else:
            print(line, flush=True)

    def _due(self, last: float | None, final: bool) -> bool:
        return final or last is None or self._clock() - last >= self.interval_s

    def __call__(self, event: Event) -> None:
        kind = event.get("event")
        if kind == "step":
            final = event.get("step") == event.get("total_steps")
            if self._due(self._last_step_line, final):
                self._last_step_line = self._clock()
                step_text = f"step {event.get('step')}/{event.get('total_steps')}"
                self._emit(f"{_epoch_text(event)} {step_text} {format_stats(event)}")
        elif kind == "cache":
            final = event.get("done") == event.get("total")
            if self._due(self._last_cache_line, final):
                self._last_cache_line = self._clock()
                self._emit(f"{_stage_text(event)} {event.get('done')}/{event.get('total')}")
        elif kind == "start":
            self._emit(f"training: step {event.get('step')} of {event.get('total_steps')}")
        elif event.get("message"):
            self._emit(str(event["message"]))


class _BarsThenStats(Progress):
    """The bars (what, how far, when done) on one line each; the latest step statistics on their own line.

    On one line with the bars, rich shrank the bar, the count and the ETA to nothing on an 80-column
    terminal to make room for the statistics; below them, the statistics wrap instead.
    """

    stats = ""

    def get_renderables(self) -> Iterable[RenderableType]:
        yield self.make_tasks_table(self.tasks)
        if self.stats:
            yield Text(self.stats)


class RichDisplay:
    """A caching bar and a training bar on `console`, with messages printed above them."""

    def __init__(self, console: Console | None = None) -> None:
        from onetrainer.ui.console import stderr

        self.console = console or stderr
        self.progress = _BarsThenStats(
            TextColumn("[bold]{task.description}", table_column=Column(no_wrap=True)),
            BarColumn(table_column=Column(min_width=10)),
            MofNCompleteColumn(table_column=Column(no_wrap=True)),
            TextColumn("{task.fields[eta]}", table_column=Column(no_wrap=True)),
            console=self.console,
            transient=False,
        )
        self._cache_task: TaskID | None = None
        self._train_task: TaskID | None = None

    def __enter__(self) -> RichDisplay:
        self.progress.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.progress.stop()

    def __call__(self, event: Event) -> None:
        kind = event.get("event")
        if kind == "cache":
            total = int(event.get("total") or 0)
            if self._cache_task is None:
                self._cache_task = self.progress.add_task(_stage_text(event), total=total, eta="")
            self.progress.update(
                self._cache_task,
                description=_stage_text(event),
                completed=int(event.get("done") or 0),
                total=total,
            )
        elif kind == "start":
            self._train_task = self.progress.add_task(
                _epoch_text(event),
                total=int(event.get("total_steps") or 0),
                completed=int(event.get("step") or 0),
                eta="",
            )
        elif kind == "step" and self._train_task is not None:
            self.progress.stats = format_stats(event, eta=False)
            self.progress.update(
                self._train_task,
                completed=int(event.get("step") or 0),
                description=_epoch_text(event),
                eta=_eta_text(event),
            )
        elif event.get("message"):
            self.progress.console.print(str(event["message"]), markup=False, highlight=False)


def open_display(*, json_lines: bool, interactive: bool | None = None) -> Display:
    """The display for this terminal: JSON lines if asked, rich bars on a terminal, else plain lines."""
    if json_lines:
        return JsonDisplay()
    if interactive is None:
        interactive = sys.stdout.isatty()
    return RichDisplay() if interactive else PlainDisplay()
