"""`onetrainer train` with the memory levers, end to end on the tiny SD 1.5 model: the dry run's estimate,
quantised LoRA training with a fused backward pass and CPU-held 8-bit states, and a bf16 full fine-tune with
stochastic rounding and offloading that resumes bit-exactly."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from onetrainer.commands.app import app
from onetrainer.util.config.presets import presets_dir

runner = CliRunner()
DEMO = presets_dir() / "demo.yaml"


def _args(root: Path, dataset: Path, *overrides: str, output: str = "lora.safetensors") -> list[str]:
    return [
        "train",
        str(DEMO),
        f"data.concepts.0.path={dataset}",
        f"workspace={root / 'workspace'}",
        f"saving.output={root / 'out' / output}",
        "sampling.before_training=false",
        "sampling.every=never",
        "logging.tensorboard=false",
        *overrides,
    ]


def _invoke(args: list[str]) -> object:
    return runner.invoke(app, args, terminal_width=200)


def _memory(root: Path, dataset: Path, *overrides: str) -> dict:
    result = _invoke([*_args(root, dataset, *overrides), "--dry-run", "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout.strip().splitlines()[-1])["memory"]


def _line(memory: dict, kind: str) -> int:
    return sum(line["bytes"] for line in memory["gpu"] if line["kind"] == kind)


def test_the_dry_run_estimates_peak_memory_from_the_settings(tmp_path: Path, shapes_dataset_dir: Path) -> None:
    plain = _memory(tmp_path, shapes_dataset_dir)
    assert plain["peak_bytes"] == sum(line["bytes"] for line in plain["gpu"])
    assert {line["kind"] for line in plain["gpu"]} == {
        "weights",
        "trained",
        "gradients",
        "optimizer",
        "activations",
        "overhead",
    }
    assert plain["resolution"] == 64
    assert plain["batch_size"] == 4
    fp8 = _memory(tmp_path, shapes_dataset_dir, "parts.unet.weight_dtype=fp8")
    assert _line(fp8, "weights") < _line(plain, "weights") / 2
    bigger = _memory(tmp_path, shapes_dataset_dir, "training.batch_size=8")
    assert _line(bigger, "activations") > 1.5 * _line(plain, "activations")
    checkpointed = _memory(tmp_path, shapes_dataset_dir, "training.gradient_checkpointing=true")
    assert _line(checkpointed, "activations") < _line(plain, "activations")
    offloaded = _memory(
        tmp_path, shapes_dataset_dir, "training.optimizer_offload=true", "training.gradient_checkpointing=true"
    )
    assert _line(offloaded, "optimizer") == 0
    assert any(line["kind"] == "optimizer" for line in offloaded["cpu"])
    assert not (tmp_path / "workspace").exists()
    text = _invoke([*_args(tmp_path, shapes_dataset_dir), "--dry-run"])
    assert text.exit_code == 0, text.output
    assert "Estimated peak GPU memory" in text.output


@pytest.mark.slow
def test_a_lora_trains_on_quantised_weights_with_fused_backward_and_cpu_held_8bit_states(
    tmp_path: Path, shapes_dataset_dir: Path
) -> None:
    result = _invoke(
        _args(
            tmp_path,
            shapes_dataset_dir,
            "training.max_steps=3",
            "parts.unet.weight_dtype=nf4",
            "parts.text_encoder.weight_dtype=int8",
            "training.fused_backward=true",
            "training.max_grad_norm=null",
            "training.optimizer=adamw8bit_ao",
            "training.optimizer_offload=true",
            "training.precision=bf16",
        )
    )
    assert result.exit_code == 0, result.output
    lora = load_file(tmp_path / "out" / "lora.safetensors")
    assert lora
    assert all(torch.isfinite(tensor).all() for tensor in lora.values())


def _full(root: Path, dataset: Path, *overrides: str) -> list[str]:
    return _args(
        root,
        dataset,
        "method=full",
        "parts.unet.weight_dtype=bf16",
        "parts.unet.offload_blocks=0.5",
        "training.stochastic_rounding=true",
        "training.optimizer=adafactor",
        "training.learning_rate=1e-3",
        "training.lr_scheduler=constant",
        "training.warmup=0",
        "training.gradient_checkpointing=true",
        "training.activation_offload=true",
        "saving.dtype=bf16",
        *overrides,
        output="model.safetensors",
    )


@pytest.mark.slow
def test_a_bf16_full_fine_tune_with_offloading_resumes_bit_exactly(tmp_path: Path, shapes_dataset_dir: Path) -> None:
    straight = _invoke(_full(tmp_path / "straight", shapes_dataset_dir, "training.max_steps=4"))
    assert straight.exit_code == 0, straight.output
    first = tmp_path / "resumed"
    half = _invoke(_full(first, shapes_dataset_dir, "training.max_steps=2", "saving.backup_every=2 steps"))
    assert half.exit_code == 0, half.output
    rest = _invoke(
        [*_full(first, shapes_dataset_dir, "training.max_steps=4", "saving.overwrite=true"), "--resume", "last"]
    )
    assert rest.exit_code == 0, rest.output
    ours = load_file(first / "out" / "model.safetensors")
    reference = load_file(tmp_path / "straight" / "out" / "model.safetensors")
    assert ours.keys() == reference.keys()
    unet = [key for key in ours if key.startswith("model.diffusion_model.")]
    assert unet
    assert all(torch.equal(ours[key], reference[key]) for key in ours)


@pytest.mark.slow
def test_a_resumed_run_may_turn_the_memory_levers_on(tmp_path: Path, shapes_dataset_dir: Path) -> None:
    constant = ["training.lr_scheduler=constant", "training.warmup=0"]
    first = _invoke(
        _args(tmp_path, shapes_dataset_dir, *constant, "training.max_steps=2", "saving.backup_every=2 steps")
    )
    assert first.exit_code == 0, first.output
    levers = [
        "training.gradient_checkpointing=true",
        "parts.unet.offload_blocks=0.5",
        "training.activation_offload=true",
        "training.optimizer_offload=true",
        "training.fused_backward=true",
        "training.max_grad_norm=null",
    ]
    resumed = _invoke(
        [*_args(tmp_path, shapes_dataset_dir, *constant, "training.max_steps=3", *levers), "--resume", "last"]
    )
    assert resumed.exit_code == 0, resumed.output
    assert (tmp_path / "out" / "lora.safetensors").is_file()


def test_a_dry_run_whose_memory_cannot_be_estimated_still_reports_the_data(
    tmp_path: Path, shapes_dataset_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from onetrainer.model_setup import estimate
    from onetrainer.util.errors import UserError

    def refuse(config: object, **_: object) -> None:
        raise UserError("no architecture is shipped for this family's single files")

    monkeypatch.setattr(estimate, "estimate_memory", refuse)
    result = _invoke([*_args(tmp_path, shapes_dataset_dir), "--dry-run", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["steps_per_epoch"] == 4
    assert report["memory"] == {"error": "no architecture is shipped for this family's single files"}
    text = _invoke([*_args(tmp_path, shapes_dataset_dir), "--dry-run"])
    assert "Peak GPU memory not estimated" in text.output
