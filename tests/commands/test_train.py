"""`onetrainer train` end to end on the tiny SD 1.5 model: every method, the modes, resume, signals, NaN,
and where a run writes."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from onetrainer.trainer.backup import list_backups
from onetrainer.trainer.metrics import read_metrics
from onetrainer.util.config.presets import presets_dir

FAST_PREVIEW = "sampling.prompts=[{prompt: a red circle, steps: 2}]"


@pytest.fixture(scope="module")
def demo_overrides() -> list[str]:
    """Previews, where a run draws any, in 2 steps."""
    return [FAST_PREVIEW]


def _json_events(output: str) -> list[dict]:
    return [json.loads(line) for line in output.splitlines() if line.startswith("{")]


@pytest.fixture(scope="module")
def lora_run(
    tmp_path_factory: pytest.TempPathFactory,
    shapes_dataset_dir: Path,
    cli: Callable[..., Any],
    demo_args: Callable[..., list[str]],
) -> tuple[Path, object]:
    """A 4-step LoRA run with previews, backups and TensorBoard, reported as JSON lines."""
    root = tmp_path_factory.mktemp("lora-run")
    args = demo_args(
        root,
        shapes_dataset_dir,
        "training.max_steps=4",
        "sampling.every=2 steps",
        "saving.backup_every=2 steps",
        "saving.backup_keep_last=1",
        "--json",
    )
    result = cli(*args)
    assert result.exit_code == 0, result.output
    return root, result


def test_lora_run_writes_a_kohya_lora_previews_metrics_and_tensorboard(lora_run: tuple[Path, object]) -> None:
    root, _ = lora_run
    lora = load_file(root / "out" / "lora.safetensors")
    assert lora
    assert all(key.startswith("lora_unet_") for key in lora)
    with safe_open(root / "out" / "lora.safetensors", "pt") as handle:
        assert handle.metadata()["modelspec.architecture"].startswith("stable-diffusion-v1")
    workspace = root / "workspace"
    assert sorted(path.name for path in (workspace / "samples").iterdir()) == [
        "step-00000002-0.png",
        "step-00000004-0.png",
    ]
    assert [path.name for path in list_backups(workspace / "backups")] == ["step-00000004"]
    assert [record["step"] for record in read_metrics(workspace / "metrics.jsonl")] == [1, 2, 3, 4]
    assert any(path.name.startswith("events.out.tfevents") for path in (workspace / "tensorboard").iterdir())
    assert (workspace / "config.yaml").is_file()


def test_json_mode_prints_only_json_events(lora_run: tuple[Path, object]) -> None:
    _, result = lora_run
    events = _json_events(result.stdout)
    kinds = [event["event"] for event in events]
    assert kinds.count("step") == 4
    assert kinds[-1] == "done"
    assert {"sample", "backup", "save", "start"} <= set(kinds)
    step = next(event for event in events if event["event"] == "step")
    assert {"loss", "smoothed_loss", "lr", "steps_per_s", "images_per_s", "eta_s", "total_steps"} <= step.keys()
    assert all(line.startswith("{") for line in result.stdout.splitlines() if line.strip())


def test_resume_changing_what_is_trained_exits_2_listing_the_key(
    lora_run: tuple[Path, object],
    shapes_dataset_dir: Path,
    cli: Callable[..., Any],
    demo_args: Callable[..., list[str]],
) -> None:
    root, _ = lora_run
    args = demo_args(root, shapes_dataset_dir, "training.max_steps=4", "lora.rank=4")
    result = cli(*args, "--resume", "last")
    assert result.exit_code == 2, result.output
    assert "lora.rank" in result.output


def test_fresh_run_in_a_workspace_with_backups_is_refused(
    lora_run: tuple[Path, object], tmp_path: Path, cli: Callable[..., Any], demo_args: Callable[..., list[str]]
) -> None:
    root, _ = lora_run
    args = demo_args(tmp_path, tmp_path, "training.max_steps=4", f"workspace={root / 'workspace'}")
    result = cli(*args)
    assert result.exit_code == 2, result.output
    assert "--resume last" in result.output


@pytest.mark.parametrize(
    ("family", "method", "output", "check"),
    [
        ("sd15", "full", "model.safetensors", "model.diffusion_model.input_blocks.0.0.weight"),
        ("sd15", "embedding", "shape.safetensors", "emb_params"),
        ("sd2-v", "lora", "lora.safetensors", "lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight"),
    ],
)
def test_other_methods_and_families_train_and_save(
    tmp_path: Path,
    shapes_dataset_dir: Path,
    family: str,
    method: str,
    output: str,
    check: str,
    cli: Callable[..., Any],
    demo_args: Callable[..., list[str]],
) -> None:
    args = demo_args(
        tmp_path,
        shapes_dataset_dir,
        f"model.type={family.removesuffix('-v')}",
        f"model.base=tiny:{family}",
        f"method={method}",
        "training.max_steps=2",
        "embedding.placeholder=<shape>",
        "embedding.init_text=shape",
        "data.concepts.0.caption.prefix='<shape> '",
        output=output,
    )
    result = cli(*args)
    assert result.exit_code == 0, result.output
    tensors = load_file(tmp_path / "out" / output)
    assert check in tensors


def test_dry_run_reports_the_data_and_writes_nothing(
    tmp_path: Path, shapes_dataset_dir: Path, cli: Callable[..., Any], demo_args: Callable[..., list[str]]
) -> None:
    result = cli(*demo_args(tmp_path, shapes_dataset_dir), "--dry-run", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["event"] == "report"
    assert report["samples_per_epoch"] == 16
    assert report["steps_per_epoch"] == 4
    assert not (tmp_path / "workspace").exists()
    text = cli(*demo_args(tmp_path, shapes_dataset_dir), "--dry-run")
    assert text.exit_code == 0, text.output
    assert "steps per epoch" in text.output


def test_cache_only_fills_the_cache_and_trains_nothing(
    tmp_path: Path, shapes_dataset_dir: Path, cli: Callable[..., Any], demo_args: Callable[..., list[str]]
) -> None:
    result = cli(*demo_args(tmp_path, shapes_dataset_dir), "--cache-only", "--json")
    assert result.exit_code == 0, result.output
    done = _json_events(result.stdout)[-1]
    assert done["event"] == "done"
    assert done["images_encoded"] == 16
    assert done["images_found"] == 0
    assert any((tmp_path / "workspace" / "cache").rglob("*.safetensors"))
    assert not (tmp_path / "workspace" / "metrics.jsonl").exists()
    assert not (tmp_path / "out").exists()


def test_an_uncached_run_encodes_inside_the_step_and_trains_as_a_cached_one(
    tmp_path: Path, shapes_dataset_dir: Path, cli: Callable[..., Any], demo_args: Callable[..., list[str]]
) -> None:
    """With `data.cache: false` the step encodes the batch's pixels and captions on the device: the same
    latents and conditioning as the cache holds, so the same losses and LoRA (within float rounding: the
    cache encodes in batches of another size, and AdamW turns a rounding difference in a near-zero gradient
    into up to a learning rate, 3e-3 here)."""
    for name, settings in (("cached", []), ("uncached", ["data.cache=false"])):
        result = cli(*demo_args(tmp_path / name, shapes_dataset_dir, "training.max_steps=3", *settings))
        assert result.exit_code == 0, result.output
    assert any((tmp_path / "cached" / "workspace").rglob("*.safetensors"))
    assert not any((tmp_path / "uncached" / "workspace").rglob("*.safetensors")), "nothing was cached"
    cached, uncached = (
        read_metrics(tmp_path / name / "workspace" / "metrics.jsonl") for name in ("cached", "uncached")
    )
    assert [record["loss"] for record in uncached] == pytest.approx([record["loss"] for record in cached], rel=1e-4)
    expected, actual = (load_file(tmp_path / name / "out" / "lora.safetensors") for name in ("cached", "uncached"))
    assert expected.keys() == actual.keys()
    for key in expected:
        torch.testing.assert_close(actual[key], expected[key], rtol=1e-3, atol=1e-4)


def test_captions_longer_than_the_text_encoder_reads_are_warned_about(
    tmp_path: Path, shapes_dataset_dir: Path, cli: Callable[..., Any], demo_args: Callable[..., list[str]]
) -> None:
    dataset = tmp_path / "data"
    shutil.copytree(shapes_dataset_dir, dataset)
    image = sorted(path for path in dataset.iterdir() if path.suffix == ".png")[0]
    image.with_suffix(".txt").write_text("a red circle " * 30)
    result = cli(*demo_args(tmp_path, dataset), "--cache-only", "--json")
    assert result.exit_code == 0, result.output
    warnings = [event for event in _json_events(result.stdout) if event["event"] == "warning"]
    assert len(warnings) == 1, warnings
    assert re.search(r"1 of \d+ distinct captions are longer than the 75 tokens", warnings[0]["message"])
    assert "longest: 180 tokens" in warnings[0]["message"]
    assert image.name in warnings[0]["message"]
    image.with_suffix(".txt").write_text("a red circle")
    quiet = cli(*demo_args(tmp_path, dataset, "workspace=" + str(tmp_path / "ws2")), "--cache-only", "--json")
    assert not [event for event in _json_events(quiet.stdout) if event["event"] == "warning"]


def test_nan_loss_stops_with_exit_1_and_hints(
    tmp_path: Path, shapes_dataset_dir: Path, cli: Callable[..., Any], demo_args: Callable[..., list[str]]
) -> None:
    args = demo_args(
        tmp_path,
        shapes_dataset_dir,
        "method=full",
        "training.max_steps=8",
        "training.optimizer=sgd",
        "training.learning_rate=10",
        "training.max_grad_norm=null",
        "training.lr_scheduler=constant",
        "training.warmup=0",
        output="model.safetensors",
    )
    result = cli(*args)
    assert result.exit_code == 1, result.output
    assert "the loss became" in result.output
    assert "lower training.learning_rate" in result.output
    assert not (tmp_path / "out").exists()


def _said(output: str) -> str:
    """The output with the error panel's borders and line wrapping removed."""
    return " ".join(output.replace("│", " ").split())


def _all_finite(path: Path) -> bool:
    return all(bool(torch.isfinite(tensor).all()) for tensor in load_file(path).values())


@pytest.mark.parametrize(
    "read_back",
    [(), ("training.read_back_lag=1", "training.optimizer_args={fused: true}")],
    ids=["each-step", "a-step-late"],
)
def test_a_diverging_run_keeps_finite_backups_and_resumes_with_a_lower_learning_rate(
    tmp_path: Path,
    shapes_dataset_dir: Path,
    read_back: tuple[str, ...],
    cli: Callable[..., Any],
    demo_args: Callable[..., list[str]],
) -> None:
    # The run: a learning rate of 10 makes the weights NaN within a few steps.
    diverging = ("training.learning_rate=10", "training.warmup=0", "training.lr_scheduler=constant", *read_back)
    args = demo_args(tmp_path, shapes_dataset_dir, *diverging, "saving.backup_every=1 steps", "training.max_steps=12")
    result = cli(*args)
    assert result.exit_code == 1, result.output
    said = _said(result.output)
    assert "Training diverged" in said
    backups = list_backups(tmp_path / "workspace" / "backups")
    assert backups
    assert all(_all_finite(path / "trainable.safetensors") for path in backups)
    named = re.search(r"\(step (\d+)\) (?:holds finite weights|is good)", said)
    assert named is not None, said
    good = tmp_path / "workspace" / "backups" / f"step-{int(named.group(1)):08d}"

    # One step on from the good backup: the same batch and noise as the step that followed it in the first run,
    # whose gradient was finite (weights after two steps at a learning rate of 10 diverge again later on
    # whatever rate follows, so a longer continuation tests the data, not the resume).
    steps = f"training.max_steps={int(named.group(1)) + 1}"
    resumed = cli(*args, "--resume", str(good), "training.learning_rate=1e-3", steps)
    assert resumed.exit_code == 0, resumed.output
    assert _all_finite(tmp_path / "out" / "lora.safetensors")


@pytest.mark.parametrize(
    ("problem", "says"),
    [
        ("workspace-is-a-file", "is a file"),
        ("output-is-a-folder", "exists as a folder"),
        ("read-only-output-folder", "is not writable"),
    ],
)
def test_where_a_run_writes_is_checked_before_the_model_loads(
    tmp_path: Path,
    shapes_dataset_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    problem: str,
    says: str,
    cli: Callable[..., Any],
    demo_args: Callable[..., list[str]],
) -> None:
    overrides = ["model.base=onetrainer-test/never-loaded"]
    if problem == "workspace-is-a-file":
        (tmp_path / "workspace").write_text("a file")
    elif problem == "output-is-a-folder":
        (tmp_path / "out" / "lora.safetensors").mkdir(parents=True)
        overrides.append("saving.overwrite=true")
    else:
        (tmp_path / "out").mkdir()
        real_access = os.access
        monkeypatch.setattr(os, "access", lambda path, mode: Path(path) != tmp_path / "out" and real_access(path, mode))
    result = cli(*demo_args(tmp_path, shapes_dataset_dir, *overrides))
    assert result.exit_code == 2, result.output
    assert says in _said(result.output)
    assert "never-loaded" not in result.output
    assert "Unexpected error" not in result.output


def test_a_model_that_does_not_load_leaves_no_workspace_behind(
    tmp_path: Path, shapes_dataset_dir: Path, cli: Callable[..., Any], demo_args: Callable[..., list[str]]
) -> None:
    result = cli(*demo_args(tmp_path, shapes_dataset_dir, "model.base=onetrainer-test/not-in-the-cache"))
    assert result.exit_code == 2, result.output
    assert "not-in-the-cache" in result.output
    assert not (tmp_path / "workspace").exists()


def test_conflicting_flags_and_bad_preview_scheduler_exit_2(
    tmp_path: Path, shapes_dataset_dir: Path, cli: Callable[..., Any], demo_args: Callable[..., list[str]]
) -> None:
    both = cli(*demo_args(tmp_path, shapes_dataset_dir), "--dry-run", "--cache-only")
    assert both.exit_code == 2
    bad = cli(*demo_args(tmp_path, shapes_dataset_dir, "sampling.prompts=[{prompt: x, scheduler: eulr}]"))
    assert bad.exit_code == 2, bad.output
    assert "euler" in bad.output


def test_existing_output_is_refused_unless_overwrite(
    tmp_path: Path, shapes_dataset_dir: Path, cli: Callable[..., Any], demo_args: Callable[..., list[str]]
) -> None:
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "lora.safetensors").write_bytes(b"precious")
    result = cli(*demo_args(tmp_path, shapes_dataset_dir, "saving.overwrite=false"))
    assert result.exit_code == 2, result.output
    assert "saving.overwrite" in result.output


def test_a_dataset_with_nothing_to_train_fails_before_the_model_loads(
    tmp_path: Path, cli: Callable[..., Any], demo_args: Callable[..., list[str]]
) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("no images here")
    result = cli(*demo_args(tmp_path, empty, "model.base=onetrainer-test/never-loaded"))
    assert result.exit_code == 2, result.output
    assert "nothing would train" in result.output
    assert "never-loaded" not in result.output


# ------------------------------------------------------------------ real signals, in a real process


DRIVER = Path(__file__).with_name("signal_driver.py")


def _start(args: list[str], *, hold: str | None = None, after: bool = False, release: Path | None = None):
    """`onetrainer ARGS --json` in a real process; with `hold`, under `signal_driver.py` (see there)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    if release is not None:
        env["ONETRAINER_TEST_RELEASE"] = str(release)
    command = [sys.executable, "-m", "onetrainer"]
    if hold is not None:
        command = [sys.executable, str(DRIVER), hold, *(["--after"] if after else []), "--"]
    return subprocess.Popen(
        [*command, *args, "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )


Trigger = tuple[Callable[[dict], bool], Callable[[], object]]


def _act_on(process: subprocess.Popen[str], triggers: list[Trigger]) -> tuple[list[dict], str]:
    """Read JSON events; at the first event each trigger matches (in order), run its action.

    Returns every event and stderr, once the process has ended.
    """
    events, pending = [], list(triggers)
    assert process.stdout is not None
    assert process.stderr is not None
    for line in process.stdout:
        if not line.startswith("{"):
            continue
        events.append(json.loads(line))
        if pending and pending[0][0](events[-1]):
            pending.pop(0)[1]()
    process.wait(timeout=300)
    return events, process.stderr.read()


def _step_at_least(step: int) -> Callable[[dict], bool]:
    return lambda event: event["event"] == "step" and event["step"] >= step


def _held(event: dict) -> bool:
    return event["event"] == "held"


def _temporaries(root: Path) -> list[Path]:
    return [path for path in root.rglob(".*") if path.name.endswith((".tmp", ".old"))]


@pytest.mark.slow
def test_sigint_backs_up_exits_130_and_resume_is_bit_exact(
    tmp_path: Path, shapes_dataset_dir: Path, cli: Callable[..., Any], demo_args: Callable[..., list[str]]
) -> None:
    overrides = ("training.max_steps=12", "training.lr_scheduler=cosine", "training.warmup=3")
    straight = tmp_path / "straight"
    assert cli(*demo_args(straight, shapes_dataset_dir, *overrides)).exit_code == 0

    split = tmp_path / "split"
    process = _start(demo_args(split, shapes_dataset_dir, *overrides))
    events, stderr = _act_on(process, [(_step_at_least(2), lambda: process.send_signal(signal.SIGINT))])
    assert process.returncode == 130, stderr
    stopped = next(event for event in events if event["event"] == "stopped")
    assert 2 <= stopped["step"] < 12
    assert "--resume last" in stderr
    assert [path.name for path in list_backups(split / "workspace" / "backups")] == [f"step-{stopped['step']:08d}"]
    assert not (split / "out").exists()

    resumed = cli(*demo_args(split, shapes_dataset_dir, *overrides), "--resume", "last")
    assert resumed.exit_code == 0, resumed.output
    expected = load_file(straight / "out" / "lora.safetensors")
    actual = load_file(split / "out" / "lora.safetensors")
    assert expected.keys() == actual.keys()
    assert all(torch.equal(expected[key], actual[key]) for key in expected)


@pytest.mark.slow
def test_second_sigint_aborts_at_once_without_partial_files(
    tmp_path: Path, shapes_dataset_dir: Path, cli: Callable[..., Any], demo_args: Callable[..., list[str]]
) -> None:
    first = cli(*demo_args(tmp_path, shapes_dataset_dir, "training.max_steps=2", "saving.backup_every=2 steps"))
    assert first.exit_code == 0, first.output
    # The resumed run's stop backup is held open until the second SIGINT: both signals land where
    # they must whatever the machine's load.
    args = [*demo_args(tmp_path, shapes_dataset_dir, "training.max_steps=10000"), "--resume", "last"]
    process = _start(args, hold="onetrainer.trainer.backup:atomic_write_text:meta.json")
    sigint = lambda: process.send_signal(signal.SIGINT)  # noqa: E731
    events, stderr = _act_on(process, [(_step_at_least(3), sigint), (_held, sigint)])
    assert process.returncode == 130, stderr
    kinds = [event["event"] for event in events]
    assert "stopping" in kinds
    assert "stopped" not in kinds
    assert _temporaries(tmp_path) == []
    backups = tmp_path / "workspace" / "backups"
    assert sorted(path.name for path in backups.iterdir()) == ["step-00000002"]
    said = _said(stderr)
    assert "interrupted at once; every file written is complete, and the newest backup is step-00000002" in said
    assert "--resume last" in said


@pytest.mark.slow
def test_sigterm_after_the_last_step_still_writes_the_output(
    tmp_path: Path, shapes_dataset_dir: Path, demo_args: Callable[..., list[str]]
) -> None:
    # The final previews are held until SIGTERM has been sent; before, it killed the process there.
    release = tmp_path / "release"
    args = demo_args(tmp_path, shapes_dataset_dir, "training.max_steps=3", "sampling.every=100 steps")
    process = _start(args, hold="onetrainer.trainer.session:draw_previews", release=release)

    def terminate_then_release() -> None:
        process.send_signal(signal.SIGTERM)
        release.touch()

    events, stderr = _act_on(process, [(_held, terminate_then_release)])
    assert process.returncode == 0, stderr
    assert [event["event"] for event in events][-3:] == ["stopping", "save", "done"]
    assert load_file(tmp_path / "out" / "lora.safetensors")
    assert _temporaries(tmp_path) == []


@pytest.mark.slow
def test_sigterm_while_caching_exits_130_without_temporary_files(
    tmp_path: Path, shapes_dataset_dir: Path, demo_args: Callable[..., list[str]]
) -> None:
    # The first cache entry's temporary file is complete and held, not yet renamed, when SIGTERM comes:
    # the hold is on the rename (`util.atomic` writes every safetensors file through a temporary).
    process = _start([*demo_args(tmp_path, shapes_dataset_dir), "--cache-only"], hold="os:replace:*.safetensors")

    def check_then_terminate() -> None:
        assert _temporaries(tmp_path / "workspace" / "cache"), "the held write should have a temporary file"
        process.send_signal(signal.SIGTERM)

    _, stderr = _act_on(process, [(_held, check_then_terminate)])
    assert process.returncode == 130, stderr
    assert "Interrupted by SIGTERM" in stderr
    assert _temporaries(tmp_path) == []


@pytest.mark.slow
def test_demo_preset_learns_and_its_lora_samples(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cli: Callable[..., Any]
) -> None:
    monkeypatch.chdir(presets_dir().parent)
    lora = tmp_path / "demo-lora.safetensors"
    args = ["train", "presets/demo.yaml", "training.epochs=10", "sampling.every=5 epochs"]
    result = cli(*args, f"workspace={tmp_path / 'workspace'}", f"saving.output={lora}")
    assert result.exit_code == 0, result.output
    losses = [record["loss"] for record in read_metrics(tmp_path / "workspace" / "metrics.jsonl")]
    assert len(losses) == 40
    assert sum(losses[-8:]) < 0.9 * sum(losses[:8])
    assert len(list((tmp_path / "workspace" / "samples").glob("*.png"))) == 6
    assert any((tmp_path / "workspace" / "tensorboard").iterdir())
    image = tmp_path / "red-circle.png"
    sampled = cli(
        "sample", "tiny:sd15", "--lora", str(lora), "--prompt", "a red circle", "--steps", "4", "-o", str(image)
    )
    assert sampled.exit_code == 0, sampled.output
    assert image.is_file()


@pytest.mark.slow
def test_a_compiled_run_reports_its_compilation_backs_up_and_resumes(
    tmp_path: Path,
    shapes_dataset_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    cli: Callable[..., Any],
    demo_args: Callable[..., list[str]],
) -> None:
    from onetrainer.model_setup import compile as regional

    monkeypatch.setattr(regional, "BACKEND", "aot_eager")  # inductor's path, with eager kernels (see test_compile)
    monkeypatch.setenv(regional.CACHE_VARIABLE, str(tmp_path / "compiled"))
    # A constant rate, so the schedule does not depend on the run's length (2 steps, then 4).
    compiled = (
        "training.compile=true",
        "training.gradient_checkpointing=true",
        "training.lr_scheduler=constant",
        "training.warmup=0",
        "--json",
    )
    straight_args = demo_args(
        tmp_path / "straight", shapes_dataset_dir, "training.max_steps=4", "sampling.every=4 steps"
    )
    straight = cli(*straight_args, *compiled)
    assert straight.exit_code == 0, straight.output
    assert (tmp_path / "straight" / "workspace" / "samples" / "step-00000004-0.png").is_file()  # drawn uncompiled
    (event,) = [event for event in _json_events(straight.stdout) if event["event"] == "compiled"]
    assert event["step"] == 1
    assert event["seconds"] > 0
    assert str(tmp_path / "compiled") in event["message"]

    split = tmp_path / "split"
    first = cli(*demo_args(split, shapes_dataset_dir, "training.max_steps=2", "saving.backup_every=2 steps", *compiled))
    assert first.exit_code == 0, first.output
    resumed = cli(*demo_args(split, shapes_dataset_dir, "training.max_steps=4", *compiled), "--resume", "last")
    assert resumed.exit_code == 0, resumed.output
    expected = load_file(tmp_path / "straight" / "out" / "lora.safetensors")
    actual = load_file(split / "out" / "lora.safetensors")
    assert expected.keys() == actual.keys()
    assert all(torch.equal(expected[key], actual[key]) for key in expected)
    losses = [record["loss"] for record in read_metrics(split / "workspace" / "metrics.jsonl")]
    straight_losses = [record["loss"] for record in read_metrics(tmp_path / "straight" / "workspace" / "metrics.jsonl")]
    assert losses == straight_losses


def test_a_resume_after_the_data_changed_says_so(
    tmp_path: Path, shapes_dataset_dir: Path, cli: Callable[..., Any], demo_args: Callable[..., list[str]]
) -> None:
    """The remaining batches depend on the planned images: with one added, the run cannot continue as if never
    stopped, and a warning says that it continues on the data as it is now."""
    dataset = Path(shutil.copytree(shapes_dataset_dir, tmp_path / "data"))
    first = cli(*demo_args(tmp_path, dataset, "training.max_steps=2", "saving.backup_every=2 steps"))
    assert first.exit_code == 0, first.output

    def resumed(max_steps: int) -> list[str]:
        args = demo_args(tmp_path, dataset, f"training.max_steps={max_steps}", "--json", "saving.overwrite=true")
        result = cli(*args, "--resume", "last")
        assert result.exit_code == 0, result.output
        return [event["message"] for event in _json_events(result.stdout) if event["event"] == "warning"]

    assert not any("data changed" in message for message in resumed(3))
    source = next(dataset.glob("*.png"))
    shutil.copy(source, dataset / f"added{source.suffix}")
    shutil.copy(source.with_suffix(".txt"), dataset / "added.txt")
    assert any("data changed since this backup" in message for message in resumed(4))


def test_a_resume_on_fewer_images_than_the_epoch_had_trained_on_starts_the_next_epoch(
    tmp_path: Path, shapes_dataset_dir: Path, cli: Callable[..., Any], demo_args: Callable[..., list[str]]
) -> None:
    """Backed up after 3 of 4 batches of 4 images; with 8 images left an epoch has 2 batches: the run goes on."""
    dataset = Path(shutil.copytree(shapes_dataset_dir, tmp_path / "data"))
    first = cli(*demo_args(tmp_path, dataset, "training.max_steps=3", "saving.backup_every=3 steps"))
    assert first.exit_code == 0, first.output
    for image in sorted(dataset.glob("*.png"))[:8]:
        image.unlink()
        image.with_suffix(".txt").unlink()
    args = demo_args(tmp_path, dataset, "training.max_steps=5", "--json", "saving.overwrite=true")
    result = cli(*args, "--resume", "last")
    assert result.exit_code == 0, result.output
    warnings = [event["message"] for event in _json_events(result.stdout) if event["event"] == "warning"]
    assert any("the epoch in progress now has 2 batches, fewer than the 3" in message for message in warnings)
    records = read_metrics(tmp_path / "workspace" / "metrics.jsonl")
    assert [(record["step"], record["epoch"]) for record in records][-2:] == [(4, 1), (5, 1)]
