"""TensorBoard values written from the background thread arrive in the event file."""

from __future__ import annotations

from pathlib import Path

from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from onetrainer.trainer.tensorboard import TensorBoardLog


def test_scalars_and_images_reach_the_event_file(tmp_path: Path) -> None:
    log = TensorBoardLog(tmp_path, enabled=True)
    for step in range(1, 4):
        log.scalars(step, {"loss/train": step / 10, "lr/unet": 1e-4})
    log.image("samples/0", Image.new("RGB", (8, 8), (255, 0, 0)), 3)
    log.close()
    events = EventAccumulator(str(tmp_path), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    assert [(event.step, round(event.value, 3)) for event in events.Scalars("loss/train")] == [
        (1, 0.1),
        (2, 0.2),
        (3, 0.3),
    ]
    assert [event.step for event in events.Images("samples/0")] == [3]


def test_disabled_log_writes_nothing(tmp_path: Path) -> None:
    log = TensorBoardLog(tmp_path / "tb", enabled=False)
    log.scalars(1, {"loss/train": 1.0})
    log.close()
    assert not (tmp_path / "tb").exists()
