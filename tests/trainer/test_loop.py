"""The loop on a toy family: exact resume, stop on signals and NaN, emergency backups, cadences, EMA."""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from onetrainer.trainer.backup import list_backups, read_backup
from onetrainer.trainer.loop import TrainingDiverged, train
from onetrainer.trainer.metrics import read_metrics
from onetrainer.trainer.parts import TrainingParts
from onetrainer.util.config.loader import load_config
from onetrainer.util.config.schema import TrainConfig
from onetrainer.util.errors import Interrupted, UserError

ToyBuild = Callable[..., Callable[..., TrainingParts]]


def _config(root: Path, *overrides: str) -> TrainConfig:
    return load_config(
        None,
        [
            "model.base=org/toy",
            f"workspace={root / 'workspace'}",
            f"saving.output={root / 'out' / 'model.safetensors'}",
            "training.device=cpu",
            "training.epochs=2",
            "training.batch_size=2",
            "training.learning_rate=0.01",
            "saving.backup_every=never",
            "logging.tensorboard=false",
            *overrides,
        ],
    )


def _interrupt_at(step: int):
    def progress(event: dict) -> None:
        if event.get("event") == "step" and event["step"] == step:
            os.kill(os.getpid(), signal.SIGINT)

    return progress


def _weights(root: Path) -> dict[str, torch.Tensor]:
    return load_file(root / "out" / "model.safetensors")


RESUME_VARIANTS = {
    "adamw-cosine-warmup": ["training.lr_scheduler=cosine", "training.warmup=3"],
    "accumulation-ema-clip": [
        "training.gradient_accumulation_steps=2",
        "training.ema.enabled=true",
        "training.ema.update_every=2",
        "training.max_grad_norm=0.05",
    ],
    "bf16-sgd-previews": [
        "training.precision=bf16",
        "training.optimizer=sgd",
        "training.momentum=0.9",
        "sampling.every=2 steps",
        "sampling.prompts=[{prompt: a red square, steps: 2}]",
        "data.resolution=64",
    ],
    "fp16-max-steps": ["training.precision=fp16", "training.max_steps=7"],
}


@pytest.mark.parametrize("variant", list(RESUME_VARIANTS))
def test_resume_after_an_interrupt_is_bit_exact(tmp_path: Path, variant: str, toy_build: ToyBuild) -> None:
    overrides = RESUME_VARIANTS[variant]
    straight = tmp_path / "straight"
    train(_config(straight, *overrides), build=toy_build())

    split = tmp_path / "split"
    with pytest.raises(Interrupted) as stopped:
        train(_config(split, *overrides), build=toy_build(), progress=_interrupt_at(3))
    assert "after step 3" in stopped.value.message
    assert [path.name for path in list_backups(split / "workspace" / "backups")] == ["step-00000003"]
    assert not (split / "out" / "model.safetensors").exists()
    result = train(_config(split, *overrides), build=toy_build(), resume="last")

    assert result.step == {"fp16-max-steps": 7, "accumulation-ema-clip": 6}.get(variant, 10)
    expected, actual = _weights(straight), _weights(split)
    assert expected.keys() == actual.keys()
    for key in expected:
        assert torch.equal(expected[key], actual[key]), key
    steps = [record["step"] for record in read_metrics(split / "workspace" / "metrics.jsonl")]
    assert steps == list(range(1, result.step + 1))


def test_nan_loss_stops_and_keeps_the_last_good_backup(tmp_path: Path, toy_build: ToyBuild) -> None:
    config = _config(tmp_path, "saving.backup_every=2 steps")
    with pytest.raises(TrainingDiverged) as error:
        train(config, build=toy_build(nan_at_step=5))
    assert "at step 5" in error.value.message
    assert "backup (step 4) is intact" in error.value.message
    backups = list_backups(tmp_path / "workspace" / "backups")
    assert [path.name for path in backups] == ["step-00000002", "step-00000004"]
    assert read_backup(backups[-1]).step == 4
    assert not (tmp_path / "out" / "model.safetensors").exists()


def test_fp16_nan_hints_at_precision(tmp_path: Path, toy_build: ToyBuild) -> None:
    with pytest.raises(TrainingDiverged) as error:
        train(_config(tmp_path, "training.precision=fp16"), build=toy_build(nan_at_step=1))
    assert "bf16" in error.value.hint
    assert "no backup was written yet" in error.value.message


def test_an_error_mid_run_writes_an_exact_emergency_backup(tmp_path: Path, toy_build: ToyBuild) -> None:
    straight = tmp_path / "straight"
    train(_config(straight), build=toy_build())
    crashed = tmp_path / "crashed"
    with pytest.raises(RuntimeError, match="toy failure"):
        train(_config(crashed), build=toy_build(fail_at_step=6))
    assert [path.name for path in list_backups(crashed / "workspace" / "backups")] == ["step-00000005"]
    train(_config(crashed), build=toy_build(), resume="last")
    expected, actual = _weights(straight), _weights(crashed)
    assert all(torch.equal(expected[key], actual[key]) for key in expected)


def test_cadences_fire_at_the_right_steps(tmp_path: Path, toy_build: ToyBuild) -> None:
    config = _config(
        tmp_path,
        "sampling.every=3 steps",
        "sampling.prompts=[{prompt: a red square, steps: 2}]",
        "data.resolution=64",
        "saving.every=1 epoch",
        "saving.backup_every=4 steps",
        "saving.backup_keep_last=2",
        "logging.validate_every=5 steps",
    )
    events: list[dict] = []
    build = toy_build(validation=True)
    train(config, build=build, progress=events.append)
    workspace = tmp_path / "workspace"
    assert sorted(path.name for path in (workspace / "samples").iterdir()) == [
        "step-00000003-0.png",
        "step-00000006-0.png",
        "step-00000009-0.png",
        "step-00000010-0.png",
    ]
    assert sorted(path.name for path in (workspace / "saves").iterdir()) == [
        "step-00000005.safetensors",
        "step-00000010.safetensors",
    ]
    assert [path.name for path in list_backups(workspace / "backups")] == ["step-00000008", "step-00000010"]
    assert [event["step"] for event in events if event["event"] == "validation"] == [5, 10]
    assert [event["step"] for event in events if event["event"] == "backup"] == [4, 8, 10]
    assert events[-1]["event"] == "done"


def test_previews_and_validation_do_not_change_training(tmp_path: Path, toy_build: ToyBuild) -> None:
    plain = tmp_path / "plain"
    train(_config(plain), build=toy_build())
    busy = tmp_path / "busy"
    train(
        _config(
            busy,
            "sampling.every=1 steps",
            "sampling.before_training=true",
            "sampling.prompts=[{prompt: x, steps: 1}]",
            "data.resolution=64",
            "logging.validate_every=2 steps",
        ),
        build=toy_build(validation=True),
    )
    expected, actual = _weights(plain), _weights(busy)
    assert all(torch.equal(expected[key], actual[key]) for key in expected)
    assert (busy / "workspace" / "samples" / "step-00000000-0.png").exists()


def test_ema_weights_are_saved_when_configured(tmp_path: Path, toy_build: ToyBuild) -> None:
    raw_root, ema_root, ema_off_root = tmp_path / "raw", tmp_path / "ema", tmp_path / "ema-off"
    train(_config(raw_root), build=toy_build())
    build = toy_build()
    train(_config(ema_root, "training.ema.enabled=true", "training.ema.decay=0.5"), build=build)
    shadow = build.last.setup
    train(
        _config(ema_off_root, "training.ema.enabled=true", "training.ema.decay=0.5", "training.ema.for_saves=false"),
        build=toy_build(),
    )
    raw, ema, ema_off = _weights(raw_root), _weights(ema_root), _weights(ema_off_root)
    assert all(torch.equal(raw[key], ema_off[key]) for key in raw)
    assert any(not torch.equal(raw[key], ema[key]) for key in raw)
    live = shadow.trainable_state_dict()
    assert all(torch.equal(live[key], raw[key]) for key in raw)


def test_workspace_holds_config_metrics_and_tensorboard(tmp_path: Path, toy_build: ToyBuild) -> None:
    train(_config(tmp_path, "logging.tensorboard=true", "training.warmup=4"), build=toy_build())
    workspace = tmp_path / "workspace"
    assert load_config(workspace / "config.yaml").training.learning_rate == 0.01
    records = read_metrics(workspace / "metrics.jsonl")
    assert len(records) == 10
    first = records[0]
    assert {"step", "epoch", "loss", "smoothed_loss", "lr", "steps_per_s", "images_per_s"} <= first.keys()
    assert first["lr"] == {"first": 0.0025, "second": 0.0025}
    assert records[3]["lr"] == {"first": 0.01, "second": 0.01}
    assert records[-1]["epoch"] == 1
    assert any(path.name.startswith("events.out.tfevents") for path in (workspace / "tensorboard").iterdir())
    json.dumps(records)


def test_resume_with_a_changed_learning_rate_is_refused(tmp_path: Path, toy_build: ToyBuild) -> None:
    with pytest.raises(Interrupted):
        train(_config(tmp_path), build=toy_build(), progress=_interrupt_at(2))
    with pytest.raises(UserError, match=r"training\.learning_rate"):
        train(_config(tmp_path, "training.learning_rate=0.02"), build=toy_build(), resume="last")


def _double_sigint_at(where: str, steps_done: int) -> Callable[[str, int], None]:
    def hook(point: str, step: int) -> None:
        if point == where and step == steps_done:
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)

    return hook


def _leftovers(root: Path) -> list[Path]:
    return [path for path in root.rglob("*") if path.name.startswith(".") or path.suffix == ".tmp"]


def test_second_sigint_mid_step_aborts_without_a_backup(tmp_path: Path, toy_build: ToyBuild) -> None:
    events: list[dict] = []
    with pytest.raises(KeyboardInterrupt):
        train(_config(tmp_path), build=toy_build(hook=_double_sigint_at("predict", 2)), progress=events.append)
    assert [event["step"] for event in events if event["event"] == "step"] == [1, 2]
    assert "stopped" not in [event["event"] for event in events]
    assert not (tmp_path / "workspace" / "backups").exists()
    assert not (tmp_path / "out").exists()
    assert _leftovers(tmp_path) == []


def test_second_sigint_mid_backup_leaves_only_complete_backups(tmp_path: Path, toy_build: ToyBuild) -> None:
    config = _config(tmp_path, "saving.backup_every=1 steps")
    with pytest.raises(KeyboardInterrupt):
        # The setup counts steps as they begin: at 3, the backup written after step 4 is interrupted.
        train(config, build=toy_build(hook=_double_sigint_at("state_dict", 3)))
    backups = tmp_path / "workspace" / "backups"
    complete = ["step-00000001", "step-00000002", "step-00000003"]
    assert [path.name for path in list_backups(backups)] == complete
    assert sorted(path.name for path in backups.iterdir()) == complete
    assert _leftovers(tmp_path) == []
