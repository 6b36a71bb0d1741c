"""Train under torchrun (or in this process) and report what each rank did, for the distributed tests.

    torchrun --nproc_per_node 2 --master_addr 127.0.0.1 --master_port PORT distributed_driver.py SPEC.json

SPEC is a JSON object: `report` (a folder), `watch` (folders whose writes are recorded) and `runs`, each
`{"config": PATH, "overrides": [...], "resume": null | "last", "keyed_noise": false, "fail_on_rank": R,
"fail_at_step": S, "stop_on_rank": R, "stop_at_step": S, "grow_data": false}` (`fail_*` make rank R fail in
step S's forward pass; `stop_*` send rank R a SIGTERM there, a stop request; `grow_data` makes rank 0 copy
its first concept's first image and caption under a new name once it has scanned the folder, before the
other ranks scan it: a folder still being synced), trained one after the other with
`trainer.loop.train` and the real `build_parts`. Each rank writes `report/rank-R.json`: per run, the
final step (or, for a run stopped by a signal, the message it stopped with), its caching statistics, a
fingerprint of the noise generator it was given, and every file it opened for writing (or renamed,
created, removed) under the watched folders, caught by an audit hook; `report/run-I-rank-R.safetensors`,
its trained tensors; and `report/run-I-rank-R-initial.safetensors`, its trained tensors as built (rank 0's
are the run's initial values, which the others receive from it).

`keyed_noise` replaces the noise of every sample by noise keyed by (sample id, step), and runs the
model one sample at a time: a batch then trains the same whichever rank holds which of its samples,
so two ranks with batch b can be compared with one process with batch 2b.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch

WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
WRITE_EVENTS = ("os.rename", "os.replace", "os.mkdir", "os.remove", "os.rmdir", "shutil.rmtree", "os.symlink")


class WriteAudit:
    """Every path under `folders` this process writes to, from Python's audit events."""

    def __init__(self, folders: list[str]) -> None:
        self.folders = [os.path.realpath(folder) for folder in folders]
        self.writes: list[str] = []
        self.active = True

    def _watched(self, path: Any) -> str | None:
        if isinstance(path, os.PathLike):
            path = os.fspath(path)
        if not isinstance(path, str):
            return None
        real = os.path.realpath(path)
        return real if any(real == folder or real.startswith(folder + os.sep) for folder in self.folders) else None

    def __call__(self, event: str, arguments: tuple[Any, ...]) -> None:
        if not self.active:
            return
        if event == "open" and len(arguments) >= 3:
            path, mode, flags = arguments[:3]
            writes = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
                isinstance(flags, int) and flags & WRITE_FLAGS
            )
            paths = [path] if writes else []
        elif event in WRITE_EVENTS:
            paths = [argument for argument in arguments[:2] if isinstance(argument, (str, os.PathLike))]
        else:
            return
        for path in paths:
            watched = self._watched(path)
            if watched is not None:
                self.writes.append(f"{event} {watched}")


def _split(batch: dict[str, Any], index: int) -> dict[str, Any]:
    count = len(batch["sample_ids"])
    single: dict[str, Any] = {}
    for key, value in batch.items():
        per_sample = isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape[0] == count
        if per_sample or (isinstance(value, list) and len(value) == count):
            single[key] = value[index : index + 1]
        else:
            single[key] = value
    return single


def _instrument(
    setup: Any, record: dict[str, Any], *, keyed_noise: bool, fail_at_step: int | None, stop_at_step: int | None
) -> None:
    """Fingerprint the noise generator the rank is given; with `keyed_noise`, replace its noise (see the
    module docstring); with `fail_at_step`, raise in that step's forward pass; with `stop_at_step`, send this
    process a SIGTERM there (the trainer's stop request; the step goes on)."""
    from onetrainer.data_loader.rng import keyed_seed

    predict, on_step = setup.predict, setup.on_step
    current = {"step": 0}

    def instrumented_on_step(step: int, epoch: int) -> None:
        current["step"] = step
        on_step(step, epoch)

    def instrumented_predict(batch: dict[str, Any], generator: torch.Generator) -> dict[str, torch.Tensor]:
        record.setdefault("noise_state", int(generator.get_state().double().sum()))
        if fail_at_step is not None and current["step"] + 1 == fail_at_step:
            raise RuntimeError(f"injected failure in step {fail_at_step}")
        if stop_at_step is not None and current["step"] + 1 == stop_at_step:
            os.kill(os.getpid(), signal.SIGTERM)
        if not keyed_noise:
            return predict(batch, generator)
        outputs = []
        for index, sample in enumerate(batch["sample_ids"]):
            keyed = torch.Generator(device=generator.device)
            keyed.manual_seed(keyed_seed(sample, current["step"]) % 2**63)
            outputs.append(predict(_split(batch, index), keyed))
        return {key: torch.cat([output[key] for output in outputs]) for key in outputs[0]}

    setup.on_step = instrumented_on_step
    setup.predict = instrumented_predict


def _save_tensors(tensors: dict[str, torch.Tensor], path: Path) -> None:
    from safetensors.torch import save_file

    save_file({key: value.detach().cpu().contiguous() for key, value in tensors.items()}, path)


def _grown_after_scan(build_data_loader: Any) -> Any:
    """`build_data_loader` that, on rank 0, adds an image to the first concept's folder once it has scanned it."""
    import shutil

    def build(config: Any, **kwargs: Any) -> Any:
        loader = build_data_loader(config, **kwargs)
        if kwargs.get("rank") == 0:
            folder = Path(config.data.concepts[0].path)
            image = sorted(folder.glob("*.png"))[0]
            shutil.copy(image, folder / "zz-added.png")
            shutil.copy(image.with_suffix(".txt"), folder / "zz-added.txt")
        return loader

    return build


def _build(
    record: dict[str, Any],
    *,
    initial: Path,
    keyed_noise: bool,
    fail_at_step: int | None,
    stop_at_step: int | None,
    grow_data: bool,
) -> Any:
    import onetrainer.data_loader
    from onetrainer.trainer.components import build_parts
    from onetrainer.trainer.sharding import local_tensors

    def build(config: Any, **kwargs: Any) -> Any:
        scan = onetrainer.data_loader.build_data_loader
        if grow_data:
            onetrainer.data_loader.build_data_loader = _grown_after_scan(scan)
        try:
            parts = build_parts(config, **kwargs)
        finally:
            onetrainer.data_loader.build_data_loader = scan
        weights = parts.setup.trainable_state_dict()
        _save_tensors(dict(zip(weights, local_tensors(weights.values()), strict=True)), initial)
        fill_cache = parts.data.fill_cache

        def recorded_fill() -> Any:
            stats = fill_cache()
            record["cache"] = {
                "images_encoded": stats.images_encoded,
                "texts_encoded": stats.texts_encoded,
                "images_found": stats.images_found,
                "texts_found": stats.texts_found,
            }
            return stats

        parts.data.fill_cache = recorded_fill
        _instrument(parts.setup, record, keyed_noise=keyed_noise, fail_at_step=fail_at_step, stop_at_step=stop_at_step)
        record["setup"] = parts.setup
        return parts

    return build


def run(spec: dict[str, Any], rank: int = 0) -> list[dict[str, Any]]:
    """Train every run of `spec` in this process; returns (and writes) this rank's report."""
    from onetrainer.trainer.loop import train
    from onetrainer.trainer.sharding import local_tensors
    from onetrainer.util.config.loader import load_config
    from onetrainer.util.errors import Interrupted
    from onetrainer.util.threads import apply_threads

    report = Path(spec["report"])
    audit = WriteAudit(spec.get("watch", []))
    if audit.folders:
        sys.addaudithook(audit)
    records = []
    for index, item in enumerate(spec["runs"]):
        config = load_config(Path(item["config"]), item.get("overrides", []))
        apply_threads(config.training.threads, workers=config.data.workers)  # as `onetrainer train` does
        record: dict[str, Any] = {}
        audit.writes = []
        try:
            result = train(
                config,
                build=_build(
                    record,
                    initial=report / f"run-{index}-rank-{rank}-initial.safetensors",
                    keyed_noise=item.get("keyed_noise", False),
                    fail_at_step=item.get("fail_at_step") if rank == item.get("fail_on_rank") else None,
                    stop_at_step=item.get("stop_at_step") if rank == item.get("stop_on_rank") else None,
                    grow_data=item.get("grow_data", False),
                ),
                resume=item.get("resume"),
                command="onetrainer train CONFIG",
            )
        except Interrupted as stopped:
            result = None
            record["stopped"] = stopped.message
        setup = record.pop("setup")
        weights = setup.trainable_state_dict()
        tensors = dict(zip(weights, local_tensors(weights.values()), strict=True))
        audit.active = False
        _save_tensors(tensors, report / f"run-{index}-rank-{rank}.safetensors")
        audit.active = True
        if result is not None:
            record.update(step=result.step, output=str(result.output) if result.output else None)
        record["writes"] = audit.writes
        records.append(record)
    audit.active = False
    (report / f"rank-{rank}.json").write_text(json.dumps(records, indent=1))
    return records


def main() -> None:
    import torch.distributed as dist

    spec = json.loads(Path(sys.argv[1]).read_text())
    dist.init_process_group("gloo", timeout=timedelta(seconds=120))
    try:
        run(spec, dist.get_rank())
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
