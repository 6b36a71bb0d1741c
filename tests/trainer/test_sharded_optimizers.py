"""The optimizers `training.distributed: fsdp` allows (`SHARDABLE`) step sharded weights as they step whole ones.

The others are refused before anything loads (`trainer.sharding.uses_sharding`); this keeps the list honest.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from onetrainer.trainer.launch import free_port
from onetrainer.util.config.optimizer_args import SHARDABLE

DRIVER = Path(__file__).with_name("sharded_optimizer_driver.py")


def test_the_optimizers_allowed_with_fsdp_step_sharded_weights_as_whole_ones(tmp_path: Path) -> None:
    report = tmp_path / "report.json"
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node=2",
        "--master-addr=127.0.0.1",
        f"--master-port={free_port()}",
        str(DRIVER),
        str(report),
        *(optimizer.value for optimizer in SHARDABLE),
    ]
    done = subprocess.run(
        command, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=240
    )
    assert done.returncode == 0, done.stderr[-4000:]
    differences = json.loads(report.read_text())
    assert set(differences) == {optimizer.value for optimizer in SHARDABLE}
    assert {name: found for name, found in differences.items() if not isinstance(found, float) or found > 1e-5} == {}
