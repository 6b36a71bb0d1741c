"""`onetrainer train` with the memory levers, end to end on the tiny SD 1.5 model: the dry run's estimate,
quantised LoRA training with a fused backward pass and CPU-held 8-bit states, and a bf16 full fine-tune with
stochastic rounding and offloading that resumes bit-exactly."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file


@pytest.fixture(scope="module")
def demo_overrides() -> list[str]:
    """No TensorBoard logs: these runs are about memory."""
    return ["logging.tensorboard=false"]


@pytest.fixture
def memory(cli: Callable[..., Any], demo_args: Callable[..., list[str]]) -> Callable[..., dict]:
    """`memory(root, dataset, *overrides)`: the dry run's memory estimate for the demo run."""

    def estimate(root: Path, dataset: Path, *overrides: str) -> dict:
        result = cli(*demo_args(root, dataset, *overrides), "--dry-run", "--json")
        assert result.exit_code == 0, result.output
        return json.loads(result.stdout.strip().splitlines()[-1])["memory"]

    return estimate


def _line(memory: dict, kind: str) -> int:
    return sum(line["bytes"] for line in memory["gpu"] if line["kind"] == kind)


def test_the_dry_run_estimates_peak_memory_from_the_settings(
    tmp_path: Path,
    shapes_dataset_dir: Path,
    cli: Callable[..., Any],
    demo_args: Callable[..., list[str]],
    memory: Callable[..., dict],
) -> None:
    plain = memory(tmp_path, shapes_dataset_dir)
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
    fp8 = memory(tmp_path, shapes_dataset_dir, "parts.unet.weight_dtype=fp8")
    assert _line(fp8, "weights") < _line(plain, "weights") / 2
    bigger = memory(tmp_path, shapes_dataset_dir, "training.batch_size=8")
    assert _line(bigger, "activations") > 1.5 * _line(plain, "activations")
    checkpointed = memory(tmp_path, shapes_dataset_dir, "training.gradient_checkpointing=true")
    assert _line(checkpointed, "activations") < _line(plain, "activations")
    offloaded = memory(
        tmp_path, shapes_dataset_dir, "training.optimizer_offload=true", "training.gradient_checkpointing=true"
    )
    assert _line(offloaded, "optimizer") == 0
    assert any(line["kind"] == "optimizer" for line in offloaded["cpu"])
    assert not (tmp_path / "workspace").exists()
    text = cli(*demo_args(tmp_path, shapes_dataset_dir), "--dry-run")
    assert text.exit_code == 0, text.output
    assert "Estimated peak GPU memory" in text.output


def test_the_dry_run_compares_the_estimate_with_the_training_gpu(
    tmp_path: Path,
    shapes_dataset_dir: Path,
    cli: Callable[..., Any],
    demo_args: Callable[..., list[str]],
    memory: Callable[..., dict],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """On a machine with the GPU that trains, the dry run says whether the estimate fits it, and when it does
    not, which memory presets of the model are made for a GPU that size (a card sold as N GB has N * 10**9
    bytes), the largest first."""
    import onetrainer.util.devices as devices

    assert memory(tmp_path, shapes_dataset_dir)["fits"] is None, "no CUDA GPU here: nothing to compare with"
    monkeypatch.setattr(devices, "gpu_memory", lambda device: 80 * 10**9)
    roomy = memory(tmp_path, shapes_dataset_dir)
    assert roomy["gpu_total_bytes"] == 80 * 10**9
    assert roomy["fits"] is True
    assert roomy["fitting_presets"] == []
    monkeypatch.setattr(devices, "gpu_memory", lambda device: 6 * 10**9 + 1)  # less than the run's 0.6 GiB overhead
    tight = memory(tmp_path, shapes_dataset_dir, "training.batch_size=64", "data.resolution=1024")
    assert tight["fits"] is False
    assert tight["fitting_presets"] == ["sd15-lora-6gb", "sd15-lora-4gb"]
    text = cli(*demo_args(tmp_path, shapes_dataset_dir, "training.batch_size=64", "data.resolution=1024"), "--dry-run")
    assert text.exit_code == 0, text.output
    assert "more than this GPU's 5.6 GiB" in " ".join(text.output.split())


@pytest.mark.slow
def test_a_lora_on_quantised_weights_with_fused_backward_and_cpu_held_8bit_states_resumes_bit_exactly(
    tmp_path: Path, shapes_dataset_dir: Path, cli: Callable[..., Any], demo_args: Callable[..., list[str]]
) -> None:
    """torchao's 8-bit states go through the backup and back (with `sd15-full-8gb`'s optimizer)."""
    levers = [
        "parts.unet.weight_dtype=nf4",
        "parts.text_encoder.weight_dtype=int8",
        "training.fused_backward=true",
        "training.max_grad_norm=null",
        "training.optimizer=adamw8bit_ao",
        "training.optimizer_offload=true",
        "training.precision=bf16",
        "training.lr_scheduler=constant",
        "training.warmup=0",
    ]

    def run(root: Path, *overrides: str, resume: tuple[str, ...] = ()) -> None:
        result = cli(*demo_args(root, shapes_dataset_dir, *levers, *overrides), *resume)
        assert result.exit_code == 0, result.output

    run(tmp_path / "straight", "training.max_steps=4")
    run(tmp_path / "resumed", "training.max_steps=2", "saving.backup_every=2 steps")
    run(tmp_path / "resumed", "training.max_steps=4", "saving.overwrite=true", resume=("--resume", "last"))
    ours = load_file(tmp_path / "resumed" / "out" / "lora.safetensors")
    reference = load_file(tmp_path / "straight" / "out" / "lora.safetensors")
    assert ours.keys() == reference.keys()
    assert all(torch.isfinite(tensor).all() for tensor in ours.values())
    assert all(torch.equal(ours[key], reference[key]) for key in ours)


@pytest.fixture
def full_args(demo_args: Callable[..., list[str]]) -> Callable[..., list[str]]:
    """`full_args(root, dataset, *overrides)`: a bf16 full fine-tune with every memory lever on."""

    def args(root: Path, dataset: Path, *overrides: str) -> list[str]:
        return demo_args(
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

    return args


LEVERS = {
    "plain-step": [],
    "fused-backward-cpu-states": [
        "training.fused_backward=true",
        "training.max_grad_norm=null",
        "training.optimizer_offload=true",
    ],
}
"""With the update after the backward pass, or inside it with the optimizer's states on CPU masters."""


@pytest.mark.slow
@pytest.mark.parametrize("levers", list(LEVERS))
def test_a_bf16_full_fine_tune_with_offloading_resumes_bit_exactly(
    tmp_path: Path,
    shapes_dataset_dir: Path,
    cli: Callable[..., Any],
    full_args: Callable[..., list[str]],
    levers: str,
) -> None:
    def full(root: Path, *overrides: str) -> list[str]:
        return full_args(root, shapes_dataset_dir, *LEVERS[levers], *overrides)

    straight = cli(*full(tmp_path / "straight", "training.max_steps=4"))
    assert straight.exit_code == 0, straight.output
    first = tmp_path / "resumed"
    half = cli(*full(first, "training.max_steps=2", "saving.backup_every=2 steps"))
    assert half.exit_code == 0, half.output
    rest = cli(*full(first, "training.max_steps=4", "saving.overwrite=true"), "--resume", "last")
    assert rest.exit_code == 0, rest.output
    ours = load_file(first / "out" / "model.safetensors")
    reference = load_file(tmp_path / "straight" / "out" / "model.safetensors")
    assert ours.keys() == reference.keys()
    unet = [key for key in ours if key.startswith("model.diffusion_model.")]
    assert unet
    assert all(torch.equal(ours[key], reference[key]) for key in ours)


@pytest.mark.slow
def test_a_resumed_run_may_turn_the_memory_levers_on(
    tmp_path: Path, shapes_dataset_dir: Path, cli: Callable[..., Any], demo_args: Callable[..., list[str]]
) -> None:
    constant = ["training.lr_scheduler=constant", "training.warmup=0"]
    first = cli(
        *demo_args(tmp_path, shapes_dataset_dir, *constant, "training.max_steps=2", "saving.backup_every=2 steps")
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
    resumed = cli(
        *demo_args(tmp_path, shapes_dataset_dir, *constant, "training.max_steps=3", *levers), "--resume", "last"
    )
    assert resumed.exit_code == 0, resumed.output
    assert (tmp_path / "out" / "lora.safetensors").is_file()


def test_a_dry_run_whose_memory_cannot_be_estimated_still_reports_the_data(
    tmp_path: Path,
    shapes_dataset_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    cli: Callable[..., Any],
    demo_args: Callable[..., list[str]],
) -> None:
    from onetrainer.model_setup import estimate
    from onetrainer.util.errors import UserError

    def refuse(config: object, **_: object) -> None:
        raise UserError("no architecture is shipped for this family's single files")

    monkeypatch.setattr(estimate, "estimate_memory", refuse)
    result = cli(*demo_args(tmp_path, shapes_dataset_dir), "--dry-run", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["steps_per_epoch"] == 4
    assert report["memory"] == {"error": "no architecture is shipped for this family's single files"}
    text = cli(*demo_args(tmp_path, shapes_dataset_dir), "--dry-run")
    assert "Peak GPU memory not estimated" in text.output
