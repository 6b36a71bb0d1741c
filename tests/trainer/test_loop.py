"""The loop on a toy family: exact resume, stop on signals and NaN, emergency backups, cadences, EMA."""

from __future__ import annotations

import json
import math
import os
import signal
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from onetrainer.trainer.backup import list_backups, read_backup
from onetrainer.trainer.divergence import SKIPPED_STEPS_LIMIT
from onetrainer.trainer.loop import TrainingDiverged, train
from onetrainer.trainer.metrics import read_metrics
from onetrainer.trainer.parts import TrainingParts
from onetrainer.util.atomic import save_safetensors
from onetrainer.util.config.loader import load_config
from onetrainer.util.config.schema import TrainConfig
from onetrainer.util.errors import Interrupted, RuntimeFailure, UserError

ToyBuild = Callable[..., Callable[..., TrainingParts]]
ToyConfig = Callable[..., TrainConfig]


def _interrupt_at(step: int, event_kind: str = "step", events: list[dict] | None = None):
    """A progress callback that sends this process SIGINT when the `event_kind` event of `step` comes."""

    def progress(event: dict) -> None:
        if events is not None:
            events.append(event)
        if event.get("event") == event_kind and event["step"] == step:
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


READ_BACK = {
    "each-step": [],
    "two-steps-late": ["training.read_back_lag=2", "training.optimizer_args={fused: true}"],
}
"""How the NaN guard reads the loss and gradient norm: before each update, or two steps later with the
update skipped on the device (a fused optimizer takes the flag); see `trainer.readback`."""


@pytest.mark.parametrize("variant", list(RESUME_VARIANTS))
def test_resume_after_an_interrupt_is_bit_exact(
    tmp_path: Path, variant: str, toy_build: ToyBuild, toy_config: ToyConfig
) -> None:
    overrides = RESUME_VARIANTS[variant]
    straight = tmp_path / "straight"
    train(toy_config(straight, *overrides), build=toy_build())

    split = tmp_path / "split"
    with pytest.raises(Interrupted) as stopped:
        train(toy_config(split, *overrides), build=toy_build(), progress=_interrupt_at(3))
    assert "after step 3" in stopped.value.message
    assert [path.name for path in list_backups(split / "workspace" / "backups")] == ["step-00000003"]
    assert not (split / "out" / "model.safetensors").exists()
    result = train(toy_config(split, *overrides), build=toy_build(), resume="last")

    assert result.step == {"fp16-max-steps": 7, "accumulation-ema-clip": 6}.get(variant, 10)
    expected, actual = _weights(straight), _weights(split)
    assert expected.keys() == actual.keys()
    for key in expected:
        assert torch.equal(expected[key], actual[key]), key
    steps = [record["step"] for record in read_metrics(split / "workspace" / "metrics.jsonl")]
    assert steps == list(range(1, result.step + 1))


def test_read_two_steps_late_a_signal_stops_later_and_resumes_bit_exactly(
    tmp_path: Path, toy_build: ToyBuild, toy_config: ToyConfig
) -> None:
    late = READ_BACK["two-steps-late"]
    straight = tmp_path / "straight"
    train(toy_config(straight, *late), build=toy_build())
    split = tmp_path / "split"
    events: list[dict] = []
    with pytest.raises(Interrupted) as stopped:
        train(toy_config(split, *late), build=toy_build(), progress=_interrupt_at(3, events=events))
    # Step 3 is read (and the signal sent) at the end of step 5; the stop writes the steps still pending.
    assert "after step 5" in stopped.value.message
    assert [event["step"] for event in events if event["event"] == "step"] == [1, 2, 3, 4, 5]
    assert [path.name for path in list_backups(split / "workspace" / "backups")] == ["step-00000005"]
    train(toy_config(split, *late), build=toy_build(), resume="last")
    expected, actual = _weights(straight), _weights(split)
    assert all(torch.equal(expected[key], actual[key]) for key in expected)
    steps = [record["step"] for record in read_metrics(split / "workspace" / "metrics.jsonl")]
    assert steps == list(range(1, 11))


@pytest.mark.parametrize("read_back", list(READ_BACK))
def test_nan_loss_stops_and_names_a_backup_that_does_not_repeat_it(
    tmp_path: Path, read_back: str, toy_build: ToyBuild, toy_config: ToyConfig
) -> None:
    # Step 5's loss comes from the weights of step 4, so its backup would only repeat the NaN: step 2's is named.
    config = toy_config(tmp_path, "saving.backup_every=2 steps", *READ_BACK[read_back])
    build = toy_build(nan_at_step=5)
    with pytest.raises(TrainingDiverged) as error:
        train(config, build=build, command="run-it")
    message = error.value.message
    assert "the loss became nan at step 5, before its update" in message
    assert "the newest backup (step 4) holds the weights that gave this" in message
    assert "the one before it (step 2) is good" in message
    backups = list_backups(tmp_path / "workspace" / "backups")
    assert [path.name for path in backups] == ["step-00000002", "step-00000004"]
    assert error.value.where == str(backups[0])
    assert f"`run-it --resume {backups[0]} training.learning_rate=...`" in error.value.hint
    assert not (tmp_path / "out" / "model.safetensors").exists()
    # No update after step 4 was made, however late the divergence was read.
    step_4 = read_backup(backups[1]).weights
    assert all(torch.equal(value, step_4[key]) for key, value in build.last.setup.trainable_state_dict().items())


@pytest.mark.parametrize("read_back", list(READ_BACK))
def test_fp16_nan_hints_at_precision(
    tmp_path: Path, read_back: str, toy_build: ToyBuild, toy_config: ToyConfig
) -> None:
    with pytest.raises(TrainingDiverged) as error:
        train(toy_config(tmp_path, "training.precision=fp16", *READ_BACK[read_back]), build=toy_build(nan_at_step=1))
    assert "bf16" in error.value.hint
    assert "no backup was written, so there is none to continue from" in error.value.message


@pytest.mark.parametrize("read_back", list(READ_BACK))
def test_fp16_skips_overflowed_steps_but_stops_when_no_step_can_train(
    tmp_path: Path, read_back: str, toy_build: ToyBuild, toy_config: ToyConfig
) -> None:
    """The scaler skips a step with non-finite gradients; gradients that stay non-finite would skip every step."""
    fp16 = ("training.precision=fp16", "training.epochs=30", "training.max_steps=100", *READ_BACK[read_back])
    assert train(toy_config(tmp_path / "once", *fp16), build=toy_build(bad_gradient_at_step=3)).step == 100
    with pytest.raises(TrainingDiverged, match=f"non-finite at {SKIPPED_STEPS_LIMIT} steps in a row") as error:
        train(toy_config(tmp_path / "always", *fp16), build=toy_build(bad_gradients_from_step=5))
    records = read_metrics(tmp_path / "always" / "workspace" / "metrics.jsonl")
    first = next(record["step"] for record in records if not math.isfinite(record["grad_norm"]))
    assert all(math.isfinite(record["grad_norm"]) for record in records if record["step"] < first)
    assert f"up to step {first + SKIPPED_STEPS_LIMIT - 1} " in error.value.message


def _finite(tensors: dict[str, torch.Tensor]) -> bool:
    return all(bool(torch.isfinite(tensor).all()) for tensor in tensors.values())


@pytest.mark.parametrize("read_back", list(READ_BACK))
def test_non_finite_gradients_stop_before_the_update_and_the_backup_stays_good(
    tmp_path: Path, read_back: str, toy_build: ToyBuild, toy_config: ToyConfig
) -> None:
    # The loss of step 4 is finite, its gradients are not: stepping would make every weight NaN, and
    # with backup_keep_last=1 the NaN backup of step 4 would replace the last good one, step 2's.
    config = toy_config(tmp_path, "saving.backup_every=2 steps", "saving.backup_keep_last=1", *READ_BACK[read_back])
    build = toy_build(bad_gradient_at_step=4)
    with pytest.raises(TrainingDiverged) as error:
        train(config, build=build, command="run-it")
    assert "the gradients became non-finite at step 4" in error.value.message
    assert "the newest backup (step 2) holds finite weights" in error.value.message
    assert "`run-it --resume last training.learning_rate=...`" in error.value.hint
    backups = list_backups(tmp_path / "workspace" / "backups")
    assert [path.name for path in backups] == ["step-00000002"]
    assert _finite(read_backup(backups[0]).weights)
    assert _finite(build.last.setup.trainable_state_dict())

    resumed = toy_config(tmp_path, "training.learning_rate=0.001", *READ_BACK[read_back])
    result = train(resumed, build=toy_build(), resume="last")
    assert result.step == 10
    assert _finite(_weights(tmp_path))


@pytest.mark.parametrize("read_back", list(READ_BACK))
def test_when_the_only_backup_would_repeat_the_divergence_none_is_offered(
    tmp_path: Path, read_back: str, toy_build: ToyBuild, toy_config: ToyConfig
) -> None:
    config = toy_config(tmp_path, "saving.backup_every=1 steps", "saving.backup_keep_last=1", *READ_BACK[read_back])
    with pytest.raises(TrainingDiverged) as error:
        train(config, build=toy_build(bad_gradient_at_step=4))
    assert "the newest backup (step 3) holds the weights that gave this" in error.value.message
    assert "no earlier backup is left" in error.value.message
    assert "start again" in error.value.hint
    assert "--resume" not in error.value.hint


def _poison_weights_at(step: int, build: Callable[..., TrainingParts]) -> Callable[[dict], None]:
    """A progress callback that makes one weight NaN as step `step` is logged (before its cadences)."""

    def progress(event: dict) -> None:
        if event.get("event") == "step" and event["step"] == step:
            with torch.no_grad():
                build.last.setup.model[0].weight[0, 0] = float("nan")

    return progress


@pytest.mark.parametrize("read_back", list(READ_BACK))
def test_non_finite_weights_are_never_backed_up_or_saved(
    tmp_path: Path, read_back: str, toy_build: ToyBuild, toy_config: ToyConfig
) -> None:
    backed_up = tmp_path / "backed-up"
    build = toy_build()
    with pytest.raises(TrainingDiverged) as error:
        config = toy_config(backed_up, "saving.backup_every=1 steps", *READ_BACK[read_back])
        train(config, build=build, progress=_poison_weights_at(3, build))
    assert "the weights became non-finite in the update of step 3" in error.value.message
    assert "the newest backup (step 2) holds finite weights" in error.value.message
    backups = list_backups(backed_up / "workspace" / "backups")
    assert [path.name for path in backups] == ["step-00000001", "step-00000002"]
    assert all(_finite(read_backup(path).weights) for path in backups)

    saved = tmp_path / "saved"
    build = toy_build()
    with pytest.raises(TrainingDiverged) as error:
        train(toy_config(saved, *READ_BACK[read_back]), build=build, progress=_poison_weights_at(10, build))
    assert "the weights to save at step 10 are not finite" in error.value.message
    assert not (saved / "out").exists()


def test_a_backup_with_non_finite_weights_is_not_resumed(
    tmp_path: Path, toy_build: ToyBuild, toy_config: ToyConfig
) -> None:
    with pytest.raises(Interrupted):
        train(toy_config(tmp_path, "saving.backup_every=1 steps"), build=toy_build(), progress=_interrupt_at(3))
    newest = list_backups(tmp_path / "workspace" / "backups")[-1]
    weights = load_file(newest / "trainable.safetensors")
    save_safetensors({key: tensor * float("nan") for key, tensor in weights.items()}, newest / "trainable.safetensors")
    with pytest.raises(UserError, match="non-finite") as error:
        train(toy_config(tmp_path), build=toy_build(), resume="last")
    assert "step-00000002" in error.value.hint


@pytest.mark.parametrize("read_back", list(READ_BACK))
def test_an_error_mid_run_writes_an_exact_emergency_backup(
    tmp_path: Path, read_back: str, toy_build: ToyBuild, toy_config: ToyConfig
) -> None:
    straight = tmp_path / "straight"
    train(toy_config(straight, *READ_BACK[read_back]), build=toy_build())
    crashed = tmp_path / "crashed"
    with pytest.raises(RuntimeError, match="toy failure"):
        train(toy_config(crashed, *READ_BACK[read_back]), build=toy_build(fail_at_step=6))
    assert [path.name for path in list_backups(crashed / "workspace" / "backups")] == ["step-00000005"]
    train(toy_config(crashed, *READ_BACK[read_back]), build=toy_build(), resume="last")
    expected, actual = _weights(straight), _weights(crashed)
    assert all(torch.equal(expected[key], actual[key]) for key in expected)


FUSED_BACKWARD = ["training.fused_backward=true", "training.max_grad_norm=null"]


def test_a_fused_backward_pass_writes_no_backup_of_a_step_it_began_updating(
    tmp_path: Path, toy_build: ToyBuild, toy_config: ToyConfig
) -> None:
    """Its updates run inside the backward pass: a failure or a non-finite gradient after the first of them
    leaves the weights half-changed, so only backups from before that step remain; a failure before the
    backward pass still writes an exact emergency backup."""
    diverged = tmp_path / "diverged"
    config = toy_config(diverged, "saving.backup_every=2 steps", "saving.backup_keep_last=1", *FUSED_BACKWARD)
    with pytest.raises(TrainingDiverged) as error:
        train(config, build=toy_build(bad_gradient_at_step=4))
    assert "the gradients became non-finite at step 4 (loss" in error.value.message
    assert "during its update" in error.value.message
    assert "max_grad_norm" not in error.value.hint, "the fused backward pass refuses clipping"
    backups = list_backups(diverged / "workspace" / "backups")
    assert [path.name for path in backups] == ["step-00000002"]
    assert _finite(read_backup(backups[0]).weights)

    def fail_in_backward(event: str, step: int) -> None:
        # The last layer's gradient comes first and is applied; the first layer's then fails.
        if event == "predict" and step + 1 == 6:
            build.last.setup.model[0].weight.register_hook(_raise_toy_failure)

    halfway = tmp_path / "halfway"
    build = toy_build(hook=fail_in_backward)
    events: list[dict] = []
    with pytest.raises(RuntimeError, match="toy failure in backward"):
        train(toy_config(halfway, *FUSED_BACKWARD), build=build, progress=events.append)
    assert not list_backups(halfway / "workspace" / "backups")
    warnings = [event["message"] for event in events if event["event"] == "warning"]
    assert any("no emergency backup" in message and "step 6" in message for message in warnings), warnings

    straight, crashed = tmp_path / "straight", tmp_path / "crashed"
    train(toy_config(straight, *FUSED_BACKWARD), build=toy_build())
    with pytest.raises(RuntimeError, match="toy failure"):
        train(toy_config(crashed, *FUSED_BACKWARD), build=toy_build(fail_at_step=6))
    assert [path.name for path in list_backups(crashed / "workspace" / "backups")] == ["step-00000005"]
    train(toy_config(crashed, *FUSED_BACKWARD), build=toy_build(), resume="last")
    expected, actual = _weights(straight), _weights(crashed)
    assert all(torch.equal(expected[key], actual[key]) for key in expected)


def _raise_toy_failure(gradient: torch.Tensor) -> torch.Tensor:
    raise RuntimeError("toy failure in backward")


def test_cadences_fire_at_the_right_steps(tmp_path: Path, toy_build: ToyBuild, toy_config: ToyConfig) -> None:
    config = toy_config(
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


def test_previews_and_validation_do_not_change_training(
    tmp_path: Path, toy_build: ToyBuild, toy_config: ToyConfig
) -> None:
    plain = tmp_path / "plain"
    train(toy_config(plain), build=toy_build())
    busy = tmp_path / "busy"
    train(
        toy_config(
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


def test_ema_weights_are_saved_when_configured(tmp_path: Path, toy_build: ToyBuild, toy_config: ToyConfig) -> None:
    raw_root, ema_root, ema_off_root = tmp_path / "raw", tmp_path / "ema", tmp_path / "ema-off"
    train(toy_config(raw_root), build=toy_build())
    build = toy_build()
    train(toy_config(ema_root, "training.ema.enabled=true", "training.ema.decay=0.5"), build=build)
    shadow = build.last.setup
    train(
        toy_config(ema_off_root, "training.ema.enabled=true", "training.ema.decay=0.5", "training.ema.for_saves=false"),
        build=toy_build(),
    )
    raw, ema, ema_off = _weights(raw_root), _weights(ema_root), _weights(ema_off_root)
    assert all(torch.equal(raw[key], ema_off[key]) for key in raw)
    assert any(not torch.equal(raw[key], ema[key]) for key in raw)
    live = shadow.trainable_state_dict()
    assert all(torch.equal(live[key], raw[key]) for key in raw)


def test_workspace_holds_config_metrics_and_tensorboard(
    tmp_path: Path, toy_build: ToyBuild, toy_config: ToyConfig
) -> None:
    train(toy_config(tmp_path, "logging.tensorboard=true", "training.warmup=4"), build=toy_build())
    workspace = tmp_path / "workspace"
    assert load_config(workspace / "config.yaml").training.learning_rate == 0.01
    records = read_metrics(workspace / "metrics.jsonl")
    assert len(records) == 10
    first = records[0]
    assert {"step", "epoch", "loss", "smoothed_loss", "lr", "steps_per_s", "images_per_s"} <= first.keys()
    assert first["lr"] == {"unet": 0.0025, "text_encoder": 0.0025}
    assert records[3]["lr"] == {"unet": 0.01, "text_encoder": 0.01}
    assert records[-1]["epoch"] == 1
    assert any(path.name.startswith("events.out.tfevents") for path in (workspace / "tensorboard").iterdir())
    json.dumps(records)


def test_resume_with_changed_optimisation_settings_uses_them(
    tmp_path: Path, toy_build: ToyBuild, toy_config: ToyConfig
) -> None:
    schedule = ("training.lr_scheduler=cosine", "training.warmup=3")
    with pytest.raises(Interrupted):
        train(toy_config(tmp_path, *schedule), build=toy_build(), progress=_interrupt_at(3))
    retuned = (
        "training.learning_rate=0.02",
        "parts.unet.learning_rate=0.05",
        "training.lr_scheduler=constant",
        "training.weight_decay=0.5",
    )
    train(toy_config(tmp_path, *retuned, "saving.backup_every=1 steps"), build=toy_build(), resume="last")
    records = read_metrics(tmp_path / "workspace" / "metrics.jsonl")
    assert [record["lr"] for record in records[3:]] == [{"unet": 0.05, "text_encoder": 0.02}] * 7
    newest = read_backup(list_backups(tmp_path / "workspace" / "backups")[-1])
    groups = newest.state["optimizer"]["param_groups"]
    assert [(group["initial_lr"], group["weight_decay"]) for group in groups] == [(0.05, 0.5), (0.02, 0.5)]


def test_resume_with_another_optimizer_is_refused(tmp_path: Path, toy_build: ToyBuild, toy_config: ToyConfig) -> None:
    with pytest.raises(Interrupted):
        train(toy_config(tmp_path), build=toy_build(), progress=_interrupt_at(2))
    with pytest.raises(UserError, match=r"training\.optimizer"):
        train(toy_config(tmp_path, "training.optimizer=sgd"), build=toy_build(), resume="last")


def _double_sigint_at(where: str, steps_done: int) -> Callable[[str, int], None]:
    def hook(point: str, step: int) -> None:
        if point == where and step == steps_done:
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)

    return hook


def _leftovers(root: Path) -> list[Path]:
    return [path for path in root.rglob("*") if path.name.startswith(".") or path.suffix == ".tmp"]


def test_second_sigint_mid_step_aborts_without_a_backup(
    tmp_path: Path, toy_build: ToyBuild, toy_config: ToyConfig
) -> None:
    events: list[dict] = []
    with pytest.raises(Interrupted) as error:
        train(toy_config(tmp_path), build=toy_build(hook=_double_sigint_at("predict", 2)), progress=events.append)
    assert "no backup was written, so the run cannot be continued" in error.value.message
    assert "Ctrl-C once" in error.value.hint
    assert [event["step"] for event in events if event["event"] == "step"] == [1, 2]
    assert "stopped" not in [event["event"] for event in events]
    assert not (tmp_path / "workspace" / "backups").exists()
    assert not (tmp_path / "out").exists()
    assert _leftovers(tmp_path) == []


def test_second_sigint_mid_backup_leaves_only_complete_backups(
    tmp_path: Path, toy_build: ToyBuild, toy_config: ToyConfig
) -> None:
    config = toy_config(tmp_path, "saving.backup_every=1 steps")
    with pytest.raises(Interrupted) as error:
        # The setup counts steps as they begin: at 3, the backup written after step 4 is interrupted.
        train(config, build=toy_build(hook=_double_sigint_at("state_dict", 3)), command="run-it")
    backups = tmp_path / "workspace" / "backups"
    complete = ["step-00000001", "step-00000002", "step-00000003"]
    assert [path.name for path in list_backups(backups)] == complete
    assert sorted(path.name for path in backups.iterdir()) == complete
    assert _leftovers(tmp_path) == []
    assert error.value.where == str(backups / "step-00000003")
    assert error.value.hint == "Continue with `run-it --resume last`."


# ------------------------------------------------------------------ the end of a run


@pytest.mark.parametrize(
    ("overrides", "when"),
    [
        ((), "step"),
        (
            ("sampling.every=3 steps", "sampling.prompts=[{prompt: a red square, steps: 1}]", "data.resolution=64"),
            "sample",
        ),
    ],
    ids=["at-the-last-step", "during-the-final-previews"],
)
def test_a_signal_after_the_last_step_still_writes_the_output(
    tmp_path: Path, toy_build: ToyBuild, toy_config: ToyConfig, overrides: tuple[str, ...], when: str
) -> None:
    events: list[dict] = []
    result = train(toy_config(tmp_path, *overrides), build=toy_build(), progress=_interrupt_at(10, when, events))
    assert result.step == 10
    assert result.output == tmp_path / "out" / "model.safetensors"
    assert _finite(_weights(tmp_path))
    kinds = [event["event"] for event in events]
    assert kinds[-3:] == ["stopping", "save", "done"]
    assert "writing the output, then stopping" in events[-3]["message"]
    assert _leftovers(tmp_path) == []


def test_a_signal_before_the_first_step_backs_nothing_up(
    tmp_path: Path, toy_build: ToyBuild, toy_config: ToyConfig
) -> None:
    config = toy_config(
        tmp_path, "sampling.before_training=true", "sampling.prompts=[{prompt: x, steps: 1}]", "data.resolution=64"
    )
    with pytest.raises(Interrupted, match="before the first step; nothing was trained"):
        train(config, build=toy_build(), progress=_interrupt_at(0, "sample"))
    assert not (tmp_path / "workspace" / "backups").exists()


def test_a_failed_save_keeps_the_weights_in_a_backup_and_says_how_to_write_them(
    tmp_path: Path, toy_build: ToyBuild, toy_config: ToyConfig
) -> None:
    straight = tmp_path / "straight"
    train(toy_config(straight), build=toy_build())
    failed = tmp_path / "failed"
    denied = PermissionError(13, "Permission denied", str(failed / "out" / "model.safetensors"))
    with pytest.raises(RuntimeFailure) as error:
        train(toy_config(failed), build=toy_build(save_error=denied), command="run-it")
    message = error.value.message
    assert message.startswith("training finished at step 10, but the output could not be written: PermissionError")
    backup = failed / "workspace" / "backups" / "step-00000010"
    assert f"the trained weights are safe in the backup {backup}" in message
    assert "`run-it --resume last` writes the output from that backup" in error.value.hint
    assert [path.name for path in list_backups(backup.parent)] == [backup.name]

    result = train(toy_config(failed), build=toy_build(), resume="last")
    assert result.step == 10
    expected, actual = _weights(straight), _weights(failed)
    assert all(torch.equal(expected[key], actual[key]) for key in expected)


def test_a_new_run_moves_an_earlier_runs_logs_aside(tmp_path: Path, toy_build: ToyBuild, toy_config: ToyConfig) -> None:
    config = toy_config(tmp_path, "logging.tensorboard=true", "saving.overwrite=true")
    train(config, build=toy_build())
    events: list[dict] = []
    train(config, build=toy_build(), progress=events.append)
    workspace = tmp_path / "workspace"
    [earlier] = (workspace / "earlier-runs").iterdir()
    assert any(f"moved to {earlier}" in event.get("message", "") for event in events)
    for folder in (workspace, earlier):
        assert [record["step"] for record in read_metrics(folder / "metrics.jsonl")] == list(range(1, 11))
        assert len(list((folder / "tensorboard").iterdir())) == 1
        assert (folder / "config.yaml").is_file()


def test_resuming_an_older_backup_moves_the_later_ones_aside(
    tmp_path: Path, toy_build: ToyBuild, toy_config: ToyConfig
) -> None:
    """After `--resume step-2` the abandoned steps' backups must not be what `--resume last` or pruning take: the
    resumed run's own backups are then the newest, so `last` continues it and not the branch it left. Their
    intermediate saves go with them: they are not this run's."""
    settings = ("saving.backup_every=2 steps", "saving.backup_keep_last=5", "saving.every=2 steps")
    root = tmp_path / "run"
    with pytest.raises(Interrupted):
        train(toy_config(root, *settings), build=toy_build(), progress=_interrupt_at(5))
    backups = root / "workspace" / "backups"
    assert [path.name for path in list_backups(backups)] == ["step-00000002", "step-00000004", "step-00000005"]

    events: list[dict] = []
    with pytest.raises(Interrupted):
        train(
            toy_config(root, *settings, "training.learning_rate=0.003"),
            build=toy_build(),
            resume=backups / "step-00000002",
            progress=_interrupt_at(3, events=events),
        )
    assert [path.name for path in list_backups(backups)] == ["step-00000002", "step-00000003"]
    (branch,) = (root / "workspace" / "earlier-runs").iterdir()
    assert branch.name.endswith("-after-step-2")
    assert [path.name for path in list_backups(branch / "backups")] == ["step-00000004", "step-00000005"]
    assert [path.stem for path in (branch / "saves").iterdir()] == ["step-00000004"]
    assert [path.stem for path in (root / "workspace" / "saves").iterdir()] == ["step-00000002"]
    assert any("the backups, saves and previews after step 2" in str(event.get("message")) for event in events)
    result = train(toy_config(root, *settings, "training.learning_rate=0.003"), build=toy_build(), resume="last")
    assert result.step == 10


def test_a_backup_from_another_kind_of_device_resumes_with_a_new_noise_stream(
    tmp_path: Path, toy_build: ToyBuild, toy_config: ToyConfig
) -> None:
    """A CUDA generator's state (16 bytes) cannot be set on a CPU generator (5,056), nor the other way round: a
    run moved between CPU and GPU goes on, said to no longer follow the noise it would have drawn."""
    root = tmp_path / "run"
    with pytest.raises(Interrupted):
        train(toy_config(root), build=toy_build(), progress=_interrupt_at(3))
    (backup,) = list_backups(root / "workspace" / "backups")
    state = torch.load(backup / "state.pt", map_location="cpu", weights_only=True)
    state["rng"]["noise"] = torch.zeros(16, dtype=torch.uint8)  # the form of a CUDA generator's state
    torch.save(state, backup / "state.pt")
    events: list[dict] = []
    result = train(toy_config(root), build=toy_build(), resume="last", progress=events.append)
    assert result.step == 10
    warnings = [event["message"] for event in events if event["event"] == "warning"]
    assert any("trained on another kind of device than cpu" in message for message in warnings)


def test_resuming_a_backup_from_elsewhere_moves_this_workspaces_later_ones_aside(
    tmp_path: Path, toy_build: ToyBuild, toy_config: ToyConfig
) -> None:
    """Going back to an archived branch (`earlier-runs/.../backups/step-N`) leaves the steps at and after N."""
    settings = ("saving.backup_every=2 steps", "saving.backup_keep_last=5")
    root = tmp_path / "run"
    with pytest.raises(Interrupted):
        train(toy_config(root, *settings), build=toy_build(), progress=_interrupt_at(4))
    backups = root / "workspace" / "backups"
    elsewhere = tmp_path / "kept" / "step-00000002"
    elsewhere.parent.mkdir()
    (backups / "step-00000002").rename(elsewhere)
    with pytest.raises(Interrupted):
        train(toy_config(root, *settings), build=toy_build(), resume=elsewhere, progress=_interrupt_at(3))
    assert [path.name for path in list_backups(backups)] == ["step-00000003"]
    (branch,) = (root / "workspace" / "earlier-runs").iterdir()
    assert [path.name for path in list_backups(branch / "backups")] == ["step-00000004"]
