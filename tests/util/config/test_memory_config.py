"""The memory levers' limits are checked with the config, each refusal naming its key and the way out."""

from __future__ import annotations

from typing import Any

import pytest

from onetrainer.util.config.loader import validate
from onetrainer.util.config.schema import TrainConfig
from onetrainer.util.errors import ConfigError

BASE = {"model": {"type": "sd15", "base": "tiny:sd15"}}


def _problems(**settings: Any) -> dict[str, str]:
    with pytest.raises(ConfigError) as refused:
        validate({**BASE, **settings}, check_paths=False)
    return {problem.path: problem.message for problem in refused.value.problems}


def _valid(**settings: Any) -> TrainConfig:
    return validate({**BASE, **settings}, check_paths=False)


def test_fused_backward_refuses_accumulation_clipping_fp16_and_whole_step_optimizers() -> None:
    problems = _problems(
        training={
            "fused_backward": True,
            "gradient_accumulation_steps": 2,
            "max_grad_norm": 1.0,
            "precision": "fp16",
            "optimizer": "prodigy",
        }
    )
    assert "cannot be accumulated" in problems["training.gradient_accumulation_steps"]
    assert "cannot clip" in problems["training.max_grad_norm"]
    assert "training.fused_backward" in problems
    assert _valid(training={"fused_backward": True, "max_grad_norm": None}).training.fused_backward


def test_bf16_trained_weights_need_stochastic_rounding_and_it_needs_them() -> None:
    full = {"method": "full", "parts": {"unet": {"weight_dtype": "bf16"}}}
    assert "stochastic_rounding" in _problems(**full)["parts.unet.weight_dtype"]
    assert _valid(**full, training={"stochastic_rounding": True}).parts["unet"].weight_dtype.value == "bf16"
    assert (
        "no trained weights are bf16"
        in _problems(training={"stochastic_rounding": True})["training.stochastic_rounding"]
    )
    assert (
        "fp16 overflow" in _problems(method="full", parts={"unet": {"weight_dtype": "fp16"}})["parts.unet.weight_dtype"]
    )


def test_offloading_needs_checkpointing_and_only_the_denoiser_offloads_blocks() -> None:
    problems = _problems(parts={"unet": {"offload_blocks": 0.5}}, training={"activation_offload": True})
    assert "gradient_checkpointing" in problems["parts.unet.offload_blocks"]
    assert "checkpointing on" in problems["training.activation_offload"]
    other = _problems(parts={"text_encoder": {"offload_blocks": 2}}, training={"gradient_checkpointing": True})
    assert other["parts.text_encoder.offload_blocks"] == "only the denoiser takes this key"
    assert "at most 1.0" in _problems(parts={"unet": {"offload_blocks": 1.5}})["parts.unet.offload_blocks"]
    config = _valid(parts={"unet": {"offload_blocks": 3}}, training={"gradient_checkpointing": True})
    assert config.parts["unet"].offload_blocks == 3


def test_fp16_loss_scaling_refuses_the_gradients_of_fully_trained_offloaded_blocks() -> None:
    """torch's scaler copies its scale to a CPU gradient without waiting, and its CPU kernel may read it first."""
    settings: dict[str, Any] = {
        "parts": {"unet": {"offload_blocks": 2}},
        "training": {"gradient_checkpointing": True, "precision": "fp16"},
    }
    assert "bf16 or fp32" in _problems(method="full", **settings)["parts.unet.offload_blocks"]
    assert _valid(method="lora", **settings).training.precision.value == "fp16", "LoRA's gradients stay on the GPU"
    frozen = {**settings, "parts": {"unet": {"offload_blocks": 2, "train": False}, "text_encoder": {"train": True}}}
    assert _valid(method="full", **frozen).parts["unet"].offload_blocks == 2


@pytest.mark.parametrize("dtype", ["fp8", "int8", "nf4"])
def test_a_full_fine_tune_refuses_quantised_frozen_parts_its_saved_model_would_hold(dtype: str) -> None:
    """The whole-model file would hold their quantised tensors (or fail to write them)."""
    parts = {"text_encoder": {"weight_dtype": dtype}}
    assert "whole-model files" in _problems(method="full", parts=parts)["parts.text_encoder.weight_dtype"]
    assert _valid(method="lora", parts=parts).parts["text_encoder"].weight_dtype.value == dtype


def test_cpu_held_optimizer_states_refuse_the_cuda_only_8bit_adamw() -> None:
    problems = _problems(training={"optimizer_offload": True, "optimizer": "adamw8bit"})
    assert "adamw8bit_ao" in problems["training.optimizer"]
    assert _valid(training={"optimizer_offload": True, "optimizer": "adamw8bit_ao"}).training.optimizer_offload


def test_a_read_back_lag_is_refused_before_loading_where_no_step_can_skip_on_the_device() -> None:
    """Said with the config, not once the model has loaded and the cache filled (`trainer.readback`)."""
    for lever in ("fused_backward", "stochastic_rounding", "optimizer_offload"):
        settings = {"read_back_lag": 1, lever: True, "max_grad_norm": None}
        assert f"training.{lever} updates tensor by tensor" in _problems(training=settings)["training.read_back_lag"]
    assert (
        "adafactor optimizer"
        in _problems(training={"read_back_lag": 2, "optimizer": "adafactor"})["training.read_back_lag"]
    )
    for optimizer in ("adamw", "sgd"):
        assert _valid(training={"read_back_lag": 1, "optimizer": optimizer}).training.read_back_lag == 1
    assert _valid(training={"read_back_lag": "auto", "fused_backward": True, "max_grad_norm": None})
    assert _valid(training={"read_back_lag": 0, "optimizer": "adafactor"})
