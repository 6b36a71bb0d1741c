"""Short run configs on tiny models: two CPU steps that exercise a family's whole train path (loading,
caching, training, saving) in seconds, for tests and for trying a family without its weights."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def write_run_config(
    root: Path, dataset: Path, model: dict[str, Any], method: str, output: str, **sections: Any
) -> Path:
    """`root/config.yaml`: two steps of `method` on `model` at 64 px on the CPU, its workspace in `root`,
    saving to `root/out/output`; `sections` replace whole sections of the config."""
    import yaml

    config = {
        "model": model,
        "method": method,
        "data": {"resolution": 64, "workers": 0, "concepts": [{"path": str(dataset)}]},
        "training": {"max_steps": 2, "batch_size": 2, "learning_rate": 1e-3, "device": "cpu", "precision": "fp32"},
        "sampling": {"every": "never", "before_training": False, "prompts": [{"prompt": "a red circle", "steps": 2}]},
        "saving": {"output": str(root / "out" / output), "dtype": "fp32", "backup_every": "never"},
        "logging": {"tensorboard": False},
        "workspace": str(root / "workspace"),
        **sections,
    }
    path = root / "config.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path
