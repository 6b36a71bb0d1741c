"""Data-parallel and sharded training on two CPU processes (gloo, loopback), started by torchrun.

The runs go through `distributed_driver.py`, which trains with the real `build_parts` on the tiny SD 1.5
model and reports, per rank, the trained tensors, the caching statistics and every file it wrote.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from onetrainer.commands.app import app
from onetrainer.trainer.backup import SHARDS_FOLDER, list_backups
from onetrainer.trainer.launch import free_port
from onetrainer.trainer.metrics import read_metrics
from onetrainer.util.config.presets import presets_dir

DRIVER = Path(__file__).with_name("distributed_driver.py")
DEMO = presets_dir() / "demo.yaml"
TORCHRUN_TIMEOUT_S = 240


def _overrides(root: Path, dataset: Path, *extra: str, output: str = "lora.safetensors") -> list[str]:
    return [
        f"data.concepts.0.path={dataset}",
        f"workspace={root / 'workspace'}",
        f"saving.output={root / 'out' / output}",
        "sampling.before_training=false",
        "sampling.every=never",
        "sampling.prompts=[{prompt: a red circle, steps: 2}]",
        "training.batch_size=2",
        "training.threads=1",
        "training.lr_scheduler=constant",
        "training.warmup=0",
        "logging.tensorboard=false",
        *extra,
    ]


def _torchrun_process(tmp: Path, runs: list[dict[str, Any]], *, watch: list[Path] = ()) -> subprocess.CompletedProcess:
    """Train `runs` under torchrun with two ranks (reports in `tmp/report`)."""
    report = tmp / "report"
    report.mkdir(parents=True, exist_ok=True)
    spec = tmp / "spec.json"
    spec.write_text(json.dumps({"report": str(report), "watch": [str(path) for path in watch], "runs": runs}))
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node=2",
        "--master-addr=127.0.0.1",
        f"--master-port={free_port()}",
        str(DRIVER),
        str(spec),
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=TORCHRUN_TIMEOUT_S)


def _torchrun(tmp: Path, runs: list[dict[str, Any]], *, watch: list[Path] = ()) -> list[list[dict[str, Any]]]:
    """Train `runs` under torchrun with two ranks; returns each rank's report."""
    done = _torchrun_process(tmp, runs, watch=watch)
    assert done.returncode == 0, done.stderr[-4000:]
    return [json.loads((tmp / "report" / f"rank-{rank}.json").read_text()) for rank in (0, 1)]


def _driver() -> Any:
    """The driver module, for a single-process run in this process."""
    found = importlib.util.spec_from_file_location("distributed_driver", DRIVER)
    assert found is not None
    assert found.loader is not None
    module = importlib.util.module_from_spec(found)
    found.loader.exec_module(module)
    return module


def _trained(tmp: Path, run: int, rank: int) -> dict[str, torch.Tensor]:
    return load_file(tmp / "report" / f"run-{run}-rank-{rank}.safetensors")


UNUSED_LAYER = (
    "parts.text_encoder.train=true",
    "parts.text_encoder.layer_skip=1",
    "training.weight_decay=0.5",
    "training.max_steps=3",
)
"""The text encoder's LoRA trained with weight decay, its last layer skipped: that layer gets no gradient."""


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory: pytest.TempPathFactory, shapes_dataset_dir: Path) -> tuple[Path, list[list[dict]]]:
    """Two ranks, batch 2 each, train a LoRA for 4 steps: cache, a backup and previews every 2 steps (run 0);
    then 3 steps of `UNUSED_LAYER` (run 1)."""
    root = tmp_path_factory.mktemp("ddp-run")
    overrides = _overrides(
        root, shapes_dataset_dir, "training.max_steps=4", "saving.backup_every=2 steps", "sampling.every=2 steps"
    )
    unused = _overrides(root / "unused-layer", shapes_dataset_dir, *UNUSED_LAYER)
    runs = [
        {"config": str(DEMO), "overrides": overrides, "keyed_noise": True},
        {"config": str(DEMO), "overrides": unused, "keyed_noise": True},
    ]
    return root, _torchrun(root, runs, watch=[root / "workspace", root / "out"])


def test_two_ranks_end_with_identical_parameters(ddp_run: tuple[Path, list[list[dict]]]) -> None:
    root, reports = ddp_run
    assert [[record["step"] for record in report] for report in reports] == [[4, 3], [4, 3]]
    first, second = _trained(root, 0, 0), _trained(root, 0, 1)
    assert first
    assert first.keys() == second.keys()
    assert all(torch.equal(first[key], second[key]) for key in first)
    assert not all(torch.equal(first[key], torch.zeros_like(first[key])) for key in first)


def test_only_rank_0_writes_files(ddp_run: tuple[Path, list[list[dict]]]) -> None:
    _, reports = ddp_run
    assert reports[1][0]["writes"] == []
    written = "\n".join(reports[0][0]["writes"])
    for expected in ("backups", "samples", "metrics.jsonl", "cache", "lora.safetensors"):
        assert expected in written
    assert reports[1][0]["output"] is None
    assert Path(reports[0][0]["output"]).is_file()


def test_rank_1_does_not_repeat_the_caching_pass(ddp_run: tuple[Path, list[list[dict]]]) -> None:
    _, reports = ddp_run
    first, second = reports[0][0]["cache"], reports[1][0]["cache"]
    assert first["images_encoded"] == 16
    assert first["texts_encoded"] > 0
    assert (second["images_encoded"], second["texts_encoded"]) == (0, 0)
    assert second["images_found"] == first["images_encoded"]
    assert second["texts_found"] > 0


def test_each_rank_draws_its_own_noise(ddp_run: tuple[Path, list[list[dict]]]) -> None:
    _, reports = ddp_run
    assert reports[0][0]["noise_state"] != reports[1][0]["noise_state"]


def test_two_ranks_with_batch_b_match_one_process_with_batch_2b(
    ddp_run: tuple[Path, list[list[dict]]], tmp_path: Path, shapes_dataset_dir: Path
) -> None:
    """Same global batches, gradients averaged over ranks: the same training, within float tolerance; the
    logged loss of the two ranks is their mean, which is the single process's loss."""
    root, _ = ddp_run
    (tmp_path / "report").mkdir()
    overrides = _overrides(tmp_path, shapes_dataset_dir, "training.max_steps=4", "training.batch_size=4")
    spec = {
        "report": str(tmp_path / "report"),
        "runs": [{"config": str(DEMO), "overrides": overrides, "keyed_noise": True}],
    }
    _driver().run(spec)
    two, one = _trained(root, 0, 0), _trained(tmp_path, 0, 0)
    assert two.keys() == one.keys()
    for key in one:
        torch.testing.assert_close(two[key], one[key], rtol=1e-4, atol=1e-6)
    logged = [record["loss"] for record in read_metrics(root / "workspace" / "metrics.jsonl")]
    single = [record["loss"] for record in read_metrics(tmp_path / "workspace" / "metrics.jsonl")]
    assert len(logged) == len(single) == 4
    assert logged == pytest.approx(single, rel=1e-5)


def test_a_tensor_no_rank_trains_stays_untouched_as_in_one_process(
    ddp_run: tuple[Path, list[list[dict]]], tmp_path: Path, shapes_dataset_dir: Path
) -> None:
    """The LoRA of a text-encoder layer past `layer_skip` gets no gradient on any rank: it keeps none after
    the average, so weight decay leaves it exactly as initialised, as in one process with batch 2b (a zero
    gradient would let AdamW decay it); the rest trains the same."""
    root, _ = ddp_run
    (tmp_path / "report").mkdir()
    overrides = _overrides(tmp_path, shapes_dataset_dir, *UNUSED_LAYER, "training.batch_size=4")
    runs = [{"config": str(DEMO), "overrides": overrides, "keyed_noise": True}]
    _driver().run({"report": str(tmp_path / "report"), "runs": runs})
    initial = load_file(root / "report" / "run-1-rank-0-initial.safetensors")
    two, one = _trained(root, 1, 0), _trained(tmp_path, 0, 0)
    last = max(int(key.split("layers.")[1].split(".")[0]) for key in one if key.startswith("text_encoder."))
    unused = [key for key in one if key.startswith(f"text_encoder.encoder.layers.{last}.")]
    assert unused
    for key in unused:
        assert torch.equal(two[key], initial[key]), key
        assert torch.equal(one[key], initial[key]), key
    assert not all(torch.equal(one[key], initial[key]) for key in one)
    for key in one:
        torch.testing.assert_close(two[key], one[key], rtol=1e-4, atol=1e-6)


def test_a_backup_of_two_ranks_refuses_one_process_with_the_reason(ddp_run: tuple[Path, list[list[dict]]]) -> None:
    root, _ = ddp_run
    workspace = root / "workspace"
    args = ["train", str(DEMO), f"workspace={workspace}", f"saving.output={root / 'out' / 'lora.safetensors'}"]
    result = CliRunner().invoke(app, [*args, "--resume", "last"], terminal_width=200)
    assert result.exit_code == 2, result.output
    said = " ".join(result.output.replace("│", " ").split())
    assert "trained by 2 processes and this run has 1" in said
    assert "--gpus 2" in said
    assert [path.name for path in list_backups(workspace / "backups")] == ["step-00000002", "step-00000004"]


def test_a_failure_on_one_rank_stops_both_with_an_emergency_backup(tmp_path: Path, shapes_dataset_dir: Path) -> None:
    """Rank 1 fails in step 3's forward pass: the read-back tells rank 0, both write the backup of step 2
    (the last complete one) and stop, rank 1 with its own error, rank 0 pointing to it."""
    overrides = _overrides(tmp_path, shapes_dataset_dir, "training.max_steps=6")
    runs = [{"config": str(DEMO), "overrides": overrides, "fail_on_rank": 1, "fail_at_step": 3}]
    done = _torchrun_process(tmp_path, runs)
    assert done.returncode != 0
    assert "injected failure in step 3" in done.stderr
    assert "another rank failed in step 3" in done.stderr
    assert [path.name for path in list_backups(tmp_path / "workspace" / "backups")] == ["step-00000002"]
    assert not (tmp_path / "out").exists()


def test_ranks_that_planned_different_data_refuse_to_train(tmp_path: Path) -> None:
    """An image appears in the folder after rank 0 scanned it and before rank 1 did: the plans differ, which
    would put the ranks' collective calls out of step; both refuse, saying so, before the first step."""
    from onetrainer.util.tiny.dataset import make_shapes_dataset

    dataset = make_shapes_dataset(tmp_path / "data")
    overrides = _overrides(tmp_path, dataset, "training.max_steps=6")
    done = _torchrun_process(tmp_path, [{"config": str(DEMO), "overrides": overrides, "grow_data": True}])
    assert done.returncode != 0
    said = " ".join(done.stderr.split())
    assert said.count("UserError: the training processes planned different data") == 2, done.stderr[-4000:]
    assert "rank 0: 4 batches per epoch" in said
    assert "rank 1: 5 batches per epoch" in said
    assert not (tmp_path / "workspace" / "metrics.jsonl").exists()


READ_TWO_STEPS_LATE = ("training.read_back_lag=2", "training.optimizer_args={fused: true}")
"""The loss, stop requests and failures read two steps after their step, the update skipped on the device
(`trainer.readback`): what every rank decides must still agree, at the same step."""


def test_read_two_steps_late_a_failure_on_one_rank_stops_both_at_the_same_step(
    tmp_path: Path, shapes_dataset_dir: Path
) -> None:
    """Rank 1 fails in step 3's forward pass; both ranks learn it when step 3 is read, before step 4's backup,
    which is then not written: the run went on without updates since, so no exact state exists to back up."""
    overrides = _overrides(
        tmp_path, shapes_dataset_dir, "training.max_steps=8", "saving.backup_every=2 steps", *READ_TWO_STEPS_LATE
    )
    runs = [{"config": str(DEMO), "overrides": overrides, "fail_on_rank": 1, "fail_at_step": 3}]
    done = _torchrun_process(tmp_path, runs)
    assert done.returncode != 0
    assert "injected failure in step 3" in done.stderr
    assert "another rank failed in step 3" in done.stderr
    assert [path.name for path in list_backups(tmp_path / "workspace" / "backups")] == ["step-00000002"]
    assert not (tmp_path / "out").exists()


def test_read_two_steps_late_a_stop_on_one_rank_stops_both_after_the_same_step_and_resumes_exactly(
    tmp_path: Path, shapes_dataset_dir: Path
) -> None:
    """Rank 1 is asked to stop in step 2; its request reaches rank 0 with step 2's values, read after step 4 on
    both: both stop there with one backup, from which two ranks continue as if never stopped."""

    def overrides(name: str) -> list[str]:
        return _overrides(tmp_path / name, shapes_dataset_dir, "training.max_steps=6", *READ_TWO_STEPS_LATE)

    runs = [
        {"config": str(DEMO), "overrides": overrides("straight")},
        {"config": str(DEMO), "overrides": overrides("split"), "stop_on_rank": 1, "stop_at_step": 2},
        {"config": str(DEMO), "overrides": overrides("split"), "resume": "last"},
    ]
    reports = _torchrun(tmp_path, runs)
    stopped = [report[1]["stopped"] for report in reports]
    assert "stopped by a stop request to another rank after step 4 of 6" in stopped[0]
    assert "stopped by SIGTERM after step 4 of 6" in stopped[1]
    assert [report[2]["step"] for report in reports] == [6, 6]
    assert [path.name for path in list_backups(tmp_path / "split" / "workspace" / "backups")] == ["step-00000004"]
    straight, resumed = _trained(tmp_path, 0, 0), _trained(tmp_path, 2, 0)
    assert straight.keys() == resumed.keys()
    assert all(torch.equal(straight[name], resumed[name]) for name in straight)
    steps = [record["step"] for record in read_metrics(tmp_path / "split" / "workspace" / "metrics.jsonl")]
    assert steps == list(range(1, 7))


@pytest.mark.slow
def test_memory_levers_train_the_same_on_two_ranks(tmp_path: Path, shapes_dataset_dir: Path) -> None:
    """The per-tensor updates (CPU-held 8-bit states, stochastic rounding keyed by step and tensor) and layer
    offloading run after the once-per-step gradient average, so the ranks stay identical."""
    levers = {
        "lora": (
            "parts.unet.weight_dtype=fp8",
            "parts.unet.offload_blocks=0.5",
            "training.gradient_checkpointing=true",
            "training.optimizer=adamw8bit_ao",
            "training.optimizer_offload=true",
        ),
        "full": (
            "method=full",
            "parts.unet.weight_dtype=bf16",
            "training.stochastic_rounding=true",
            "parts.unet.offload_blocks=2",
            "training.gradient_checkpointing=true",
        ),
    }
    runs = [
        {
            "config": str(DEMO),
            "overrides": _overrides(
                tmp_path / name, shapes_dataset_dir, "training.max_steps=2", *extra, output=f"{name}.safetensors"
            ),
        }
        for name, extra in levers.items()
    ]
    reports = _torchrun(tmp_path, runs)
    assert [[record["step"] for record in report] for report in reports] == [[2, 2]] * 2
    for run in range(len(runs)):
        first, second = _trained(tmp_path, run, 0), _trained(tmp_path, run, 1)
        assert first.keys() == second.keys()
        assert all(torch.equal(first[key], second[key]) for key in first), run
    full = _trained(tmp_path, 1, 0)
    assert {tensor.dtype for tensor in full.values() if tensor.is_floating_point()} == {torch.bfloat16}


@pytest.mark.slow
def test_fsdp_on_two_ranks_trains_and_its_backup_resumes_bit_exactly(tmp_path: Path, shapes_dataset_dir: Path) -> None:
    """A sharded full fine-tune: each rank writes its shards of the backup (weights, optimizer state, moving
    average), and a run resumed from it ends where an uninterrupted one does; the output (the averaged
    weights) is the usual single file, gathered on rank 0."""
    sharded = (
        "method=full",
        "training.distributed=fsdp",
        "saving.dtype=fp32",
        "sampling.every=2 steps",
        "training.ema.enabled=true",
        "training.ema.decay=0.9",
    )

    def overrides(name: str, *extra: str) -> list[str]:
        return _overrides(tmp_path / name, shapes_dataset_dir, *sharded, *extra, output="model.safetensors")

    runs = [
        {"config": str(DEMO), "overrides": overrides("straight", "training.max_steps=4")},
        {"config": str(DEMO), "overrides": overrides("split", "training.max_steps=2", "saving.backup_every=2 steps")},
        {"config": str(DEMO), "overrides": overrides("split", "training.max_steps=4"), "resume": "last"},
    ]
    reports = _torchrun(tmp_path, runs)
    assert [[record["step"] for record in report] for report in reports] == [[4, 2, 4]] * 2

    backup = tmp_path / "split" / "workspace" / "backups" / "step-00000002"
    shards = sorted(path.name for path in (backup / SHARDS_FOLDER).iterdir())
    assert shards == [".metadata", "__0_0.distcp", "__1_0.distcp"]
    assert not (backup / "trainable.safetensors").exists()
    straight = load_file(tmp_path / "straight" / "out" / "model.safetensors")
    unet = sum(tensor.numel() for name, tensor in straight.items() if name.startswith("model.diffusion_model."))
    shards = [sum(tensor.numel() for tensor in _trained(tmp_path, 0, rank).values()) for rank in (0, 1)]
    assert sum(shards) == unet
    assert 0 < shards[1] < unet
    resumed = load_file(tmp_path / "split" / "out" / "model.safetensors")
    assert straight.keys() == resumed.keys()
    assert all(torch.equal(straight[name], resumed[name]) for name in straight)
    previews = sorted(path.name for path in (tmp_path / "straight" / "workspace" / "samples").iterdir())
    assert previews == ["step-00000002-0.png", "step-00000004-0.png"]


# ------------------------------------------------------------------ one process: the same code, no group


def test_one_process_joins_no_process_group(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch.distributed as dist

    from onetrainer.trainer.distributed import join_world, leave_world

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    world, device = join_world("cpu")
    assert (world.rank, world.size, world.is_main, world.distributed, device.type) == (0, 1, True, False, "cpu")
    assert not dist.is_initialized()
    leave_world(world)


def test_one_process_on_a_named_gpu_makes_it_the_current_one(monkeypatch: pytest.MonkeyPatch) -> None:
    """Streams and events made without a device (the read-back's, the offload's) are on the current GPU."""
    import torch

    from onetrainer.trainer import device as device_module
    from onetrainer.trainer.distributed import join_world, leave_world

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.setattr(device_module, "resolve_device", lambda setting: torch.device(setting))
    made_current: list[torch.device] = []
    monkeypatch.setattr(torch.cuda, "set_device", made_current.append)
    world, device = join_world("cuda:1")
    assert device == torch.device("cuda", 1)
    assert made_current == [torch.device("cuda", 1)]
    leave_world(world)
    world, device = join_world("cuda")  # `auto` on a GPU machine: no index, torch's current GPU
    assert made_current == [torch.device("cuda", 1)], "set_device refuses a device without an index"
    leave_world(world)


def test_rank_0_keeps_the_run_seed_and_the_other_ranks_get_their_own() -> None:
    from onetrainer.trainer.distributed import rank_seed

    seeds = [rank_seed(42, rank) for rank in range(4)]
    assert seeds[0] == 42
    assert len(set(seeds)) == 4
    assert seeds == [rank_seed(42, rank) for rank in range(4)]


def test_one_rank_of_several_takes_its_own_device_and_refuses_a_named_gpu() -> None:
    from onetrainer.trainer.distributed import rank_device
    from onetrainer.util.errors import UserError

    assert rank_device("cpu", 1, 2) == torch.device("cpu")
    with pytest.raises(UserError, match="names one GPU"):
        rank_device("cuda:1", 0, 2)
    if not torch.cuda.is_available():
        assert rank_device("auto", 1, 2) == torch.device("cpu")


def test_in_one_process_leaders_first_and_together_run_the_block_once_and_pass_errors_on() -> None:
    from onetrainer.trainer.distributed import World, leaders_first, together

    world, runs = World(), []
    with leaders_first(world, "testing"):
        runs.append("leaders")
    with together(world, "testing"):
        runs.append("together")
    assert runs == ["leaders", "together"]
    with pytest.raises(ValueError, match="boom"), leaders_first(world, "testing"):
        raise ValueError("boom")
    with pytest.raises(ValueError, match="boom"), together(world, "testing"):
        raise ValueError("boom")


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, "onetrainer train c.yaml"),
        ({"ONETRAINER_LAUNCH_COMMAND": "onetrainer train c.yaml --gpus 2"}, "onetrainer train c.yaml --gpus 2"),
        ({"WORLD_SIZE": "4", "LOCAL_WORLD_SIZE": "4"}, "torchrun --nproc_per_node 4 -m onetrainer train c.yaml"),
        (
            {"WORLD_SIZE": "8", "LOCAL_WORLD_SIZE": "4"},
            "torchrun <your options, on every machine> -m onetrainer train c.yaml",
        ),
    ],
)
def test_messages_say_how_the_run_was_started(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], expected: str
) -> None:
    from onetrainer.trainer.distributed import run_command

    for name in ("ONETRAINER_LAUNCH_COMMAND", "WORLD_SIZE", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert run_command("onetrainer train c.yaml") == expected


def test_weights_and_gradients_in_cpu_memory_travel_through_the_host_group(monkeypatch: pytest.MonkeyPatch) -> None:
    """NCCL, the default group between GPUs, takes CUDA tensors only: an offloaded block's CPU masters and their
    gradients go through the gloo group the ranks already share for their agreements."""
    import torch.distributed as dist

    from onetrainer.trainer.distributed import World, average_gradients, broadcast_parameters

    calls: list[tuple[str, str, Any]] = []

    class Done:
        def wait(self) -> None:
            pass

    def broadcast(tensor: torch.Tensor, src: int, group: Any = None) -> None:
        calls.append(("broadcast", tensor.device.type, group))

    def all_reduce(tensor: torch.Tensor, op: Any = None, async_op: bool = False, group: Any = None) -> Done:
        calls.append(("all_reduce", tensor.device.type, group))
        return Done()

    monkeypatch.setattr(dist, "broadcast", broadcast)
    monkeypatch.setattr(dist, "all_reduce", all_reduce)
    world = World(rank=0, size=2, host_group="gloo group")
    masters = [torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(2))]
    on_meta = torch.nn.Parameter(torch.ones(4, device="meta"))  # stands in for a weight on the GPU
    broadcast_parameters(world, [*masters, on_meta])
    assert calls == [("broadcast", "cpu", "gloo group")] * 2 + [("broadcast", "meta", None)]
    calls.clear()
    for param in masters:
        param.grad = torch.ones_like(param)
    average_gradients(world, masters)
    assert calls == [("all_reduce", "cpu", "gloo group")] * 2, "which tensors have a gradient, then the bucket"
