"""Image folders: the data loader's own dataset report, as `train --dry-run` would show it.

The folder becomes a one-concept config so the report is exactly the loader's: counts, captions,
masks, sizes, buckets at `--resolution`, and every skipped file with its reason. Nothing is written
(the loader's file memo is read, not updated).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from onetrainer.inspection.result import Inspection


def inspect_image_folder(path: Path, *, resolution: int, model_type: str, recursive: bool) -> Inspection:
    from onetrainer.data_loader import dataset_report
    from onetrainer.trainer.components import quantisation
    from onetrainer.util.config.schema import TrainConfig
    from onetrainer.util.config.types import CHECK_PATHS

    data: dict[str, Any] = {
        "model": {"type": model_type},
        "data": {
            "resolution": resolution,
            "concepts": [{"path": str(path), "include_subdirectories": recursive}],
        },
        "workspace": str(path / ".onetrainer-inspect"),
    }
    config = TrainConfig.model_validate(data, context={CHECK_PATHS: True})
    report = dataset_report(config, quantisation=quantisation(config), workers=0)
    concept = report.concepts[0]
    summary = (
        f"image folder: {concept.found} images, {concept.used} usable, {len(concept.skipped)} skipped, "
        f"{len(report.buckets)} bucket(s) at {resolution} px"
    )
    details = {"resolution": resolution, **report.to_dict()}
    return Inspection("images", "folder", model_type, path, summary, details, view=report)
