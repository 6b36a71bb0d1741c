"""`--cache-only`: load the model, set it up and fill the data cache, without training."""

from __future__ import annotations

from typing import Any

from onetrainer.trainer.destinations import (
    cache_dir,
    check_destinations,
    remove_stale_temporaries,
    removed_on_failure,
)
from onetrainer.trainer.distributed import join_world, leaders_first, leave_world
from onetrainer.trainer.loop import BuildParts
from onetrainer.trainer.session import ProgressCallback
from onetrainer.trainer.workspace import Workspace
from onetrainer.util.config.schema import TrainConfig


def fill_cache_only(config: TrainConfig, *, build: BuildParts, progress: ProgressCallback) -> Any:
    """Encode every image and caption the run will need; returns the data loader's cache statistics.

    Like a run, it checks the workspace and cache first, removes temporary files a killed earlier
    pass left, and leaves no new folder behind if the model does not load. Under torchrun, rank 0 fills
    the cache and the other ranks find it filled.
    """
    world, device = join_world(config.training.device)
    rank = world.rank
    check_destinations(config, output=False)
    workspace = Workspace(config.workspace)
    if rank == 0:
        remove_stale_temporaries(config, output=False)
    else:
        progress = _ignore
    with removed_on_failure(workspace.root, cache_dir(config), enabled=rank == 0):
        parts = build(config, device=device, workspace=workspace, rank=rank, world_size=world.size, progress=progress)
    try:
        with leaders_first(world, "filling the data cache"):
            stats = parts.data.fill_cache()
    finally:
        if parts.close is not None:
            parts.close()
    counts = {
        "images_found": stats.images_found,
        "images_encoded": stats.images_encoded,
        "texts_found": stats.texts_found,
        "texts_encoded": stats.texts_encoded,
        "pruned": stats.pruned,
        "failed": len(stats.failed),
    }
    message = (
        f"cache ready: encoded {stats.images_encoded} image and {stats.texts_encoded} caption entries "
        f"({stats.images_found + stats.texts_found} were cached already), removed {stats.pruned} stale ones"
    )
    progress({"event": "done", **counts, "message": message})
    leave_world(world)
    return stats


def _ignore(_: dict[str, Any]) -> None:
    """Ranks other than 0 report nothing."""
