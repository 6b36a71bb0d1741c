"""Step optimizers over FSDP-sharded weights on two ranks and over the same whole weights in each process, for
`test_sharded_optimizers.py`.

    torchrun --nproc_per_node 2 sharded_optimizer_driver.py REPORT.json OPTIMIZER...

Each optimizer is built as a run builds it (`trainer.optimizers.build_optimizer`) and takes three steps on the
same batches; rank 0 writes REPORT.json: per optimizer, the largest difference between the sharded and the whole
weights after them, or the error the sharded step raised.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.fsdp import fully_shard

from onetrainer.trainer.optimizers import build_optimizer, resolve_parameter_groups, set_optimizer_mode
from onetrainer.util.config.training import Optimizer, TrainingConfig

STEPS = 3


def _model() -> torch.nn.Sequential:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Linear(16, 4))


def _step(model: torch.nn.Module, kind: Optimizer) -> None:
    config = TrainingConfig(optimizer=kind, learning_rate=1.0 if kind is Optimizer.PRODIGY else 1e-2)
    groups = resolve_parameter_groups([{"params": list(model.parameters())}], config)
    optimizer = build_optimizer(groups, config, torch.device("cpu"))
    set_optimizer_mode(optimizer, train=True)
    for step in range(STEPS):
        torch.manual_seed(step + 1)
        model(torch.randn(6, 8)).pow(2).mean().backward()
        optimizer.step()
        optimizer.zero_grad()


def _difference(kind: Optimizer, mesh: DeviceMesh) -> float | str:
    whole, sharded = _model(), _model()
    for layer in sharded:
        fully_shard(layer, mesh=mesh)
    fully_shard(sharded, mesh=mesh)
    _step(whole, kind)
    try:
        _step(sharded, kind)
    except Exception as error:  # noqa: BLE001 - reported, for the test to name
        return f"{type(error).__name__}: {error}"
    pairs = zip(whole.parameters(), sharded.parameters(), strict=True)
    return max(float((one - shards.full_tensor()).detach().abs().max()) for one, shards in pairs)


def main() -> None:
    dist.init_process_group("gloo")
    mesh = init_device_mesh("cpu", (dist.get_world_size(),))
    report = {name: _difference(Optimizer(name), mesh) for name in sys.argv[2:]}
    if dist.get_rank() == 0:
        Path(sys.argv[1]).write_text(json.dumps(report))
    dist.barrier()  # no rank tears its connections down while the other is still using them (gloo aborts)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
