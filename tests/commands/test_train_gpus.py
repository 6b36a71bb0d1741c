"""`onetrainer train CONFIG --gpus N`: torchrun started for the user, its checks, and a Ctrl-C to the launcher.

With `training.device=cpu` (the demo preset's) the N ranks are CPU processes (gloo, loopback).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from onetrainer.commands.app import app
from onetrainer.trainer.backup import list_backups
from onetrainer.trainer.metrics import read_metrics
from onetrainer.util.config.presets import presets_dir

DEMO = presets_dir() / "demo.yaml"
FSDP = ["method=full", "training.distributed=fsdp"]


def _args(root: Path, dataset: Path, *overrides: str) -> list[str]:
    return [
        "train",
        str(DEMO),
        f"data.concepts.0.path={dataset}",
        f"workspace={root / 'workspace'}",
        f"saving.output={root / 'out' / 'lora.safetensors'}",
        "sampling.before_training=false",
        "sampling.every=never",
        "training.batch_size=2",
        "training.threads=1",
        "logging.tensorboard=false",
        *overrides,
    ]


def _invoke(args: list[str]) -> object:
    return CliRunner().invoke(app, args, terminal_width=200)


def _said(output: str) -> str:
    """The output with the error panel's borders and line wrapping removed."""
    return " ".join(output.replace("│", " ").split())


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_gpus_without_cuda_exits_2_and_suggests_cpu_processes(tmp_path: Path, shapes_dataset_dir: Path) -> None:
    result = _invoke([*_args(tmp_path, shapes_dataset_dir, "training.device=auto"), "--gpus", "2"])
    assert result.exit_code == 2, result.output
    assert "needs 2 CUDA GPUs; this machine has 0" in _said(result.output)
    assert "training.device=cpu" in _said(result.output)
    assert not (tmp_path / "workspace").exists()


@pytest.mark.parametrize(
    ("extra", "said"),
    [
        (["--cache-only"], "--cache-only fills the cache in one process"),
        (["training.device=cuda:1"], "training.device cannot be cuda:1"),
        (["training.fused_backward=true", "training.max_grad_norm=null"], "fused_backward does not work with several"),
        (
            [*FSDP, "parts.unet.weight_dtype=bf16", "training.stochastic_rounding=true"],
            "stochastic rounding updates each bf16 weight through an fp32 copy",
        ),
        ([*FSDP, "training.optimizer_offload=true"], "optimizer_offload keeps CPU copies of the trained tensors"),
        ([*FSDP, "training.optimizer=adafactor"], "the adafactor optimizer cannot step the sharded weights"),
        ([*FSDP, "training.optimizer=came"], "Use one of adamw, sgd, prodigy, schedulefree_adamw, lion with"),
        (
            [*FSDP, "training.gradient_checkpointing=true", "parts.unet.offload_blocks=2"],
            "layer offloading moves the blocks of the unet, which FSDP shards",
        ),
    ],
)
def test_gpus_refuses_what_the_ranks_could_not_do(
    tmp_path: Path, shapes_dataset_dir: Path, extra: list[str], said: str
) -> None:
    result = _invoke([*_args(tmp_path, shapes_dataset_dir), *extra, "--gpus", "2"])
    assert result.exit_code == 2, result.output
    assert said in _said(result.output)


def test_gpus_refuses_to_resume_a_single_process_backup(tmp_path: Path, shapes_dataset_dir: Path) -> None:
    backup = tmp_path / "workspace" / "backups" / "step-00000002"
    backup.mkdir(parents=True)
    (backup / "meta.json").write_text(json.dumps({"format": 1, "step": 2, "epoch": 0}))
    args = [*_args(tmp_path, shapes_dataset_dir, "training.device=cpu"), "--gpus", "2", "--resume", "last"]
    result = _invoke(args)
    assert result.exit_code == 2, result.output
    assert "trained by 1 process and this run has 2" in _said(result.output)


def test_dry_run_with_gpus_plans_the_global_batches(tmp_path: Path, shapes_dataset_dir: Path) -> None:
    one = _invoke([*_args(tmp_path, shapes_dataset_dir), "--dry-run", "--json"])
    two = _invoke([*_args(tmp_path, shapes_dataset_dir), "--dry-run", "--json", "--gpus", "2"])
    assert one.exit_code == 0, one.output
    assert two.exit_code == 0, two.output
    steps = [json.loads(result.output.splitlines()[-1])["steps_per_epoch"] for result in (one, two)]
    assert steps == [8, 4]


def test_a_sharded_dry_run_estimates_the_memory_of_one_gpu(tmp_path: Path, shapes_dataset_dir: Path) -> None:
    """FSDP divides the trained weights, gradients and optimizer state over the GPUs; DDP copies them to each."""

    def memory(*extra: str) -> dict:
        result = _invoke([*_args(tmp_path, shapes_dataset_dir, "method=full"), *extra, "--dry-run", "--json"])
        assert result.exit_code == 0, result.output
        return json.loads(result.output.splitlines()[-1])["memory"]

    def line(estimate: dict, kind: str) -> int:
        return sum(entry["bytes"] for entry in estimate["gpu"] if entry["kind"] == kind)

    one, ddp = memory(), memory("--gpus", "2")
    fsdp = memory("training.distributed=fsdp", "--gpus", "2")
    for kind in ("trained", "gradients", "optimizer"):
        assert line(ddp, kind) == line(one, kind) > 0
        assert line(fsdp, kind) == -(-line(one, kind) // 2)
    gathered = [entry for entry in fsdp["gpu"] if "gathered blocks" in entry["what"]]
    assert len(gathered) == 1
    assert 0 < gathered[0]["bytes"] < line(one, "trained")
    assert fsdp["peak_bytes"] < one["peak_bytes"]


def _launch(args: list[str]) -> subprocess.Popen[str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "onetrainer", *args, "training.device=cpu", "--gpus", "2", "--json"]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


@pytest.mark.slow
def test_sigint_to_the_launcher_leaves_one_backup_and_resume_continues(
    tmp_path: Path, shapes_dataset_dir: Path
) -> None:
    process = _launch(_args(tmp_path, shapes_dataset_dir, "training.max_steps=10000"))
    events = []
    assert process.stdout is not None
    for line in process.stdout:
        if line.startswith("{"):
            events.append(json.loads(line))
            if events[-1]["event"] == "step" and events[-1]["step"] == 2:
                process.send_signal(signal.SIGINT)
    process.wait(timeout=300)
    stderr = process.stderr.read() if process.stderr is not None else ""
    assert process.returncode == 130, stderr[-3000:]
    stopped = next(event for event in events if event["event"] == "stopped")["step"]
    assert 2 <= stopped < 10000
    backups = list_backups(tmp_path / "workspace" / "backups")
    assert [path.name for path in backups] == [f"step-{stopped:08d}"]
    assert "--gpus 2 --resume last" in _said(stderr)
    assert stderr.count("stopped by SIGINT") == 1, "only rank 0 says why the ranks stopped"

    resumed = _launch([*_args(tmp_path, shapes_dataset_dir, f"training.max_steps={stopped + 2}"), "--resume", "last"])
    _, errors = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, errors[-3000:]
    steps = [record["step"] for record in read_metrics(tmp_path / "workspace" / "metrics.jsonl")]
    assert steps == list(range(1, stopped + 3))
    assert (tmp_path / "out" / "lora.safetensors").is_file()


@pytest.mark.slow
def test_an_image_one_rank_cannot_decode_stops_both_with_a_backup(tmp_path: Path) -> None:
    """With the cache off, the rank that draws a truncated image fails while fetching its batch; the step's
    read-back tells the other rank, both write the backup of the last good step and exit as one process does."""
    from onetrainer.util.tiny.dataset import make_shapes_dataset

    dataset = make_shapes_dataset(tmp_path / "data")
    broken = dataset / "shape-000.png"  # rank 1 draws it in step 3
    broken.write_bytes(broken.read_bytes()[: broken.stat().st_size // 2])
    uncached = ("training.max_steps=8", "data.cache=false", "data.verify_images=false")
    single = _invoke([*_args(tmp_path / "one", dataset, *uncached), "training.batch_size=4"])
    process = _launch(_args(tmp_path / "two", dataset, *uncached))
    _, stderr = process.communicate(timeout=300)
    said = _said(stderr)
    assert process.returncode == single.exit_code == 1, stderr[-3000:]
    assert f"cannotdecode{broken}" in "".join(said.split()), "the image named (its long path wraps in the panel)"
    assert "another rank failed in step 3" in said
    backups = list_backups(tmp_path / "two" / "workspace" / "backups")
    assert [path.name for path in backups] == ["step-00000002"]


@pytest.mark.slow
def test_a_sighup_to_the_launcher_stops_the_run_with_a_backup(tmp_path: Path, shapes_dataset_dir: Path) -> None:
    """The SSH session that started the run dropped: the ranks stop after a step with a backup, as for
    SIGTERM, instead of training on without the launcher."""
    process = _launch(_args(tmp_path, shapes_dataset_dir, "training.max_steps=200"))  # ends if not stopped
    assert process.stdout is not None
    for line in process.stdout:
        if line.startswith("{") and json.loads(line).get("step") == 2:
            process.send_signal(signal.SIGHUP)
            break
    _, stderr = process.communicate(timeout=90)
    assert process.returncode == 130, stderr[-3000:]
    assert "stopped by SIGTERM" in _said(stderr)
    assert len(list_backups(tmp_path / "workspace" / "backups")) == 1
