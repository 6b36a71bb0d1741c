"""Image folders: the data loader's own dataset report, as `train --dry-run` would show it.

The folder becomes a one-concept config so the report is exactly the loader's: counts, captions,
masks, sizes, buckets, steps, and every skipped file with its reason. With a run config, the folder
is read with that config's data and training settings (and its concept settings, when one of its
concepts is this folder), so the report equals `train --dry-run`'s for a config whose only concept
is the folder. Nothing is written (the loader's file memo is read, not updated).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from onetrainer.inspection.result import Inspection

if TYPE_CHECKING:
    from onetrainer.util.config.schema import TrainConfig

DEFAULT_RESOLUTION = 512
DEFAULT_MODEL_TYPE = "sd15"


def folder_config(
    path: Path,
    *,
    config: TrainConfig | None = None,
    resolution: int | None = None,
    batch_size: int | None = None,
    model_type: str | None = None,
    recursive: bool = False,
) -> TrainConfig:
    """The run config whose only concept is `path`: `config`'s (or the defaults), explicit options winning."""
    from onetrainer.util.config.schema import TrainConfig
    from onetrainer.util.config.types import CHECK_PATHS

    if config is None:
        data: dict[str, Any] = {
            "model": {"type": DEFAULT_MODEL_TYPE},
            "data": {"resolution": DEFAULT_RESOLUTION},
            "workspace": str(path / ".onetrainer-inspect"),
        }
        concept: dict[str, Any] = {"path": str(path)}
    else:
        data = config.model_dump(mode="json")
        same = [c for c in config.data.concepts if c.path.expanduser().resolve() == path.expanduser().resolve()]
        concept = same[0].model_dump(mode="json") if same else {"path": str(path)}
    if recursive:
        concept["include_subdirectories"] = True
    data["data"]["concepts"] = [concept]
    if resolution is not None:
        data["data"]["resolution"] = resolution
    if batch_size is not None:
        data.setdefault("training", {})["batch_size"] = batch_size
    if model_type is not None:
        data["model"]["type"] = model_type
    return TrainConfig.model_validate(data, context={CHECK_PATHS: True})


def inspect_image_folder(path: Path, config: TrainConfig) -> Inspection:
    """Describe `path` as the only concept of `config` (see `folder_config`)."""
    from onetrainer.data_loader import dataset_report
    from onetrainer.trainer.components import quantisation

    report = dataset_report(config, quantisation=quantisation(config), workers=0)
    concept = report.concepts[0]
    resolution = config.data.resolution
    sizes = "/".join(map(str, resolution)) if isinstance(resolution, list) else str(resolution)
    summary = (
        f"image folder: {concept.found} images, {concept.used} usable, {len(concept.skipped)} skipped, "
        f"{len(report.buckets)} bucket(s) at {sizes} px, batch {report.batch_size}"
    )
    details = {"resolution": resolution, **report.to_dict()}
    return Inspection("images", "folder", config.model.type.value, path, summary, details, view=report)
