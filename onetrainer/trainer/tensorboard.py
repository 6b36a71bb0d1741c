"""TensorBoard logging of losses, learning rates, validation loss and preview images.

Building TensorBoard's protobuf events costs about a tenth of a millisecond per scalar, a few
percent of a small model's step, so the training thread only queues the values and a background
thread writes them. TensorBoard event files are append-only logs written by the tensorboard library
itself; when a run resumes, the writer is opened with `purge_step` so TensorBoard hides the events
the interrupted run logged after its backup, and each step appears once.
"""

from __future__ import annotations

import queue
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from PIL import Image

_STOP = object()


class TensorBoardLog:
    """Writes on a background thread opened at the first value; does nothing when disabled."""

    def __init__(self, directory: Path, *, enabled: bool, purge_step: int | None = None) -> None:
        self.directory = directory
        self.enabled = enabled
        self.purge_step = purge_step
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def _put(self, item: tuple[str, Any, Any, int]) -> None:
        if self._error is not None:
            raise RuntimeError(f"TensorBoard logging failed: {self._error}") from self._error
        if self._thread is None:
            self._thread = threading.Thread(target=self._write, name="tensorboard", daemon=True)
            self._thread.start()
        self._queue.put(item)

    def _write(self) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.directory.mkdir(parents=True, exist_ok=True)
            writer = SummaryWriter(log_dir=str(self.directory), purge_step=self.purge_step)
        except Exception as error:  # noqa: BLE001 - handed to the training thread at its next call
            self._error = error
            return
        try:
            while (item := self._queue.get()) is not _STOP:
                kind, tag, value, step = item
                if kind == "scalar":
                    writer.add_scalar(tag, value, global_step=step)
                elif kind == "image":
                    writer.add_image(tag, value, global_step=step, dataformats="HWC")
                else:
                    writer.flush()
        except Exception as error:  # noqa: BLE001 - handed to the training thread at its next call
            self._error = error
        finally:
            writer.close()

    def scalars(self, step: int, values: dict[str, float]) -> None:
        if not self.enabled:
            return
        for tag, value in values.items():
            self._put(("scalar", tag, value, step))

    def image(self, tag: str, image: Image.Image, step: int) -> None:
        if not self.enabled:
            return
        import numpy as np

        self._put(("image", tag, np.asarray(image.convert("RGB")), step))

    def flush(self) -> None:
        if self._thread is not None:
            self._put(("flush", None, None, 0))

    def close(self, *, raise_errors: bool = True) -> None:
        """Write everything queued, then stop the thread; a second call does nothing.

        `raise_errors=False` is for closing while another error unwinds, which must stay the one seen.
        """
        if self._thread is None:
            return
        self._queue.put(_STOP)
        self._thread.join()
        self._thread = None
        if self._error is not None and raise_errors:
            raise RuntimeError(f"TensorBoard logging failed: {self._error}") from self._error
