"""TensorBoard logging of losses, learning rates, validation loss and preview images.

TensorBoard event files are append-only logs written by the tensorboard library itself. When a run
resumes, the writer is opened with `purge_step` so TensorBoard hides the events the interrupted run
logged after its backup, and each step appears once.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from PIL import Image


class TensorBoardLog:
    """A SummaryWriter opened lazily (importing tensorboard costs a second), or nothing when disabled."""

    def __init__(self, directory: Path, *, enabled: bool, purge_step: int | None = None) -> None:
        self.directory = directory
        self.enabled = enabled
        self.purge_step = purge_step
        self._writer: Any = None

    def _get(self) -> Any:
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self.directory.mkdir(parents=True, exist_ok=True)
            self._writer = SummaryWriter(log_dir=str(self.directory), purge_step=self.purge_step)
        return self._writer

    def scalars(self, step: int, values: dict[str, float]) -> None:
        if not self.enabled:
            return
        writer = self._get()
        for tag, value in values.items():
            writer.add_scalar(tag, value, global_step=step)

    def image(self, tag: str, image: Image.Image, step: int) -> None:
        if not self.enabled:
            return
        import numpy as np

        array = np.asarray(image.convert("RGB"))
        self._get().add_image(tag, array, global_step=step, dataformats="HWC")

    def flush(self) -> None:
        if self._writer is not None:
            self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
