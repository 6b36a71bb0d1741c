"""Every optimizer builds from the config and steps; mistakes in its settings fail with a clear error."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from onetrainer.trainer.optimizers import (
    build_optimizer,
    evaluation_weights,
    resolve_parameter_groups,
    set_optimizer_mode,
)
from onetrainer.util.config.loader import load_config
from onetrainer.util.config.optimizer_args import INSTALL_HINT
from onetrainer.util.config.training import Optimizer, TrainingConfig
from onetrainer.util.errors import ConfigError, UserError

CPU = torch.device("cpu")

_PACKAGES = {
    Optimizer.PRODIGY: "prodigyopt",
    Optimizer.SCHEDULE_FREE_ADAMW: "schedulefree",
    Optimizer.LION: "lion_pytorch",
    Optimizer.CAME: "came_pytorch",
}


def _groups() -> list[dict]:
    torch.manual_seed(0)
    unet = torch.nn.Linear(4, 4)
    text = torch.nn.Linear(4, 4)
    return [
        {"params": list(unet.parameters()), "name": "unet"},
        {"params": list(text.parameters()), "name": "text_encoder"},
    ]


def _step(optimizer: torch.optim.Optimizer, groups: list[dict]) -> None:
    params = [param for group in groups for param in group["params"]]
    loss = sum((param**2).sum() for param in params)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad()


@pytest.mark.parametrize("kind", [kind for kind in Optimizer if kind is not Optimizer.ADAMW_8BIT])
def test_every_cpu_optimizer_builds_and_changes_the_weights(kind: Optimizer) -> None:
    if kind in _PACKAGES:
        pytest.importorskip(_PACKAGES[kind])
    lr = 1.0 if kind is Optimizer.PRODIGY else 1e-2
    config = TrainingConfig(optimizer=kind, learning_rate=lr)
    groups = resolve_parameter_groups(_groups(), config)
    before = [param.detach().clone() for group in groups for param in group["params"]]
    optimizer = build_optimizer(groups, config, CPU, warmup_steps=0)
    set_optimizer_mode(optimizer, train=True)
    for _ in range(3):
        _step(optimizer, groups)
    after = [param.detach() for group in groups for param in group["params"]]
    assert any(not torch.equal(old, new) for old, new in zip(before, after, strict=True))


@pytest.mark.parametrize("kind", [Optimizer.ADAMW, Optimizer.SGD])
def test_adamw_and_sgd_use_fused_kernels_on_cuda_which_skip_a_step_on_the_device(kind: Optimizer) -> None:
    config = TrainingConfig(optimizer=kind)
    with torch.device("meta"):  # weights that are not in CPU memory, as on the GPU
        on_device = _groups()
    on_cuda = build_optimizer(resolve_parameter_groups(on_device, config), config, torch.device("cuda"))
    assert on_cuda.defaults["fused"] is True
    assert on_cuda._step_supports_amp_scaling  # the found_inf protocol (trainer.readback)
    assert not build_optimizer(resolve_parameter_groups(_groups(), config), config, CPU).defaults["fused"]
    # Trained tensors held in CPU memory (offloaded blocks) step with the unfused kernels.
    offloaded = build_optimizer(resolve_parameter_groups(_groups(), config), config, torch.device("cuda"))
    assert not offloaded.defaults["fused"]
    chosen = TrainingConfig(optimizer=kind, optimizer_args={"foreach": True})
    with torch.device("meta"):
        on_device = _groups()
    assert not build_optimizer(resolve_parameter_groups(on_device, chosen), chosen, torch.device("cuda")).defaults[
        "fused"
    ]


def test_fused_kernels_are_not_used_where_a_skipped_step_would_corrupt_them() -> None:
    """Fused SGD keeps uninitialised momentum when its first step is skipped; fused kernels over CPU-held weights
    read the skip flag through a non-blocking copy from the GPU. Either is refused when asked for by name."""
    cuda = torch.device("cuda")

    def fused(config: TrainingConfig, *, on_device: bool = True) -> bool:
        with torch.device("meta" if on_device else "cpu"):
            groups = _groups()
        return bool(build_optimizer(resolve_parameter_groups(groups, config), config, cuda).defaults["fused"])

    assert fused(TrainingConfig(optimizer=Optimizer.SGD))
    assert not fused(TrainingConfig(optimizer=Optimizer.SGD, momentum=0.9))
    asked = {"fused": True}
    with pytest.raises(UserError, match="uninitialised momentum") as error:
        fused(TrainingConfig(optimizer=Optimizer.SGD, momentum=0.9, optimizer_args=asked))
    assert error.value.where == "training.optimizer_args.fused"
    with pytest.raises(UserError, match="CPU memory"):
        fused(TrainingConfig(optimizer=Optimizer.ADAMW, optimizer_args=asked), on_device=False)
    assert fused(TrainingConfig(optimizer=Optimizer.ADAMW, optimizer_args=asked))
    assert build_optimizer(_groups(), TrainingConfig(optimizer=Optimizer.ADAMW, optimizer_args=asked), CPU).defaults[
        "fused"
    ], "fused kernels on the CPU read no flag from a GPU"


def test_per_part_learning_rates_apply_by_group_name() -> None:
    config = TrainingConfig(learning_rate=1e-4)
    groups = _groups()
    groups[1]["lr"] = 5e-5  # the setup gives a group `parts.<name>.learning_rate` when set
    groups = resolve_parameter_groups(groups, config)
    optimizer = build_optimizer(groups, config, CPU)
    assert {group["name"]: group["lr"] for group in optimizer.param_groups} == {"unet": 1e-4, "text_encoder": 5e-5}


def test_unknown_part_with_a_learning_rate_lists_the_parts(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as error:
        load_config(
            None, ["model.base=org/model", f"data.concepts.0.path={tmp_path}", "parts.text_encoderr.learning_rate=1e-5"]
        )
    message = str(error.value)
    assert "parts.text_encoderr" in message
    assert "did you mean 'text_encoder'" in message
    assert "unet" in message


def test_groups_without_trainable_parameters_are_dropped_and_none_at_all_is_an_error() -> None:
    groups = _groups()
    for param in groups[1]["params"]:
        param.requires_grad_(False)
    assert [group["name"] for group in resolve_parameter_groups(groups, TrainingConfig())] == ["unet"]
    for param in groups[0]["params"]:
        param.requires_grad_(False)
    with pytest.raises(UserError, match="nothing to train"):
        resolve_parameter_groups(groups, TrainingConfig())


def test_misspelled_optimizer_argument_is_refused_with_a_suggestion() -> None:
    config = TrainingConfig(optimizer=Optimizer.ADAMW, optimizer_args={"amsgrd": True})
    groups = resolve_parameter_groups(_groups(), config)
    with pytest.raises(UserError) as error:
        build_optimizer(groups, config, CPU)
    assert error.value.where == "training.optimizer_args.amsgrd"
    assert "did you mean 'amsgrad'?" in error.value.message


def test_an_optimizer_argument_a_training_key_sets_is_refused_in_a_config_made_in_code() -> None:
    """A group's `lr` wins over the constructor's, so this one never took effect (the config check refuses it too)."""
    config = TrainingConfig(optimizer=Optimizer.PRODIGY, learning_rate=1e-4, optimizer_args={"lr": 1.0})
    with pytest.raises(UserError, match=r"set training\.learning_rate instead") as error:
        build_optimizer(resolve_parameter_groups(_groups(), config), config, CPU)
    assert error.value.where == "training.optimizer_args.lr"


def test_optimizer_args_reach_the_optimizer() -> None:
    config = TrainingConfig(optimizer=Optimizer.SGD, optimizer_args={"nesterov": True}, momentum=0.9)
    optimizer = build_optimizer(resolve_parameter_groups(_groups(), config), config, CPU)
    assert optimizer.param_groups[0]["nesterov"] is True
    assert optimizer.param_groups[0]["momentum"] == 0.9


def test_betas_of_the_wrong_length_are_refused() -> None:
    config = TrainingConfig(optimizer=Optimizer.ADAMW, betas=[0.9, 0.99, 0.999])
    with pytest.raises(UserError, match="takes 2 betas"):
        build_optimizer(resolve_parameter_groups(_groups(), config), config, CPU)


def test_missing_optional_package_names_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "lion_pytorch", None)
    config = TrainingConfig(optimizer=Optimizer.LION)
    with pytest.raises(UserError) as error:
        build_optimizer(resolve_parameter_groups(_groups(), config), config, CPU)
    assert "lion-pytorch" in error.value.message
    assert error.value.hint == INSTALL_HINT
    assert "onetrainer[optim]" in error.value.hint


def test_adamw_8bit_needs_cuda() -> None:
    config = TrainingConfig(optimizer=Optimizer.ADAMW_8BIT)
    with pytest.raises(UserError, match="CUDA"):
        build_optimizer(resolve_parameter_groups(_groups(), config), config, CPU)


def test_schedule_free_takes_the_warmup_and_switches_modes() -> None:
    pytest.importorskip("schedulefree")
    config = TrainingConfig(optimizer=Optimizer.SCHEDULE_FREE_ADAMW, learning_rate=1e-2)
    groups = resolve_parameter_groups(_groups(), config)
    optimizer = build_optimizer(groups, config, CPU, warmup_steps=7)
    assert optimizer.param_groups[0]["warmup_steps"] == 7
    set_optimizer_mode(optimizer, train=True)
    assert optimizer.param_groups[0]["train_mode"] is True
    set_optimizer_mode(optimizer, train=False)
    assert optimizer.param_groups[0]["train_mode"] is False


def test_schedule_free_evaluation_weights_leave_the_training_weights_exactly_as_they_were() -> None:
    """eval() then train() moves each weight there and back by lerps that do not cancel in floating point: after
    a preview, training would go on from other weights (a run's result would depend on its preview cadence)."""
    pytest.importorskip("schedulefree")
    config = TrainingConfig(optimizer=Optimizer.SCHEDULE_FREE_ADAMW, learning_rate=1e-2)
    torch.manual_seed(0)
    layer = torch.nn.Linear(64, 64)
    groups = resolve_parameter_groups([{"params": list(layer.parameters()), "name": "unet"}], config)
    optimizer = build_optimizer(groups, config, CPU)
    set_optimizer_mode(optimizer, train=True)
    params = [param for group in optimizer.param_groups for param in group["params"]]
    for _ in range(5):
        loss = sum((param**2).sum() for param in params)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    before = [param.detach().clone() for param in params]
    with evaluation_weights(optimizer):
        assert optimizer.param_groups[0]["train_mode"] is False
        assert not all(torch.equal(param, kept) for param, kept in zip(params, before, strict=True))
    assert optimizer.param_groups[0]["train_mode"] is True
    assert all(torch.equal(param, kept) for param, kept in zip(params, before, strict=True))
    set_optimizer_mode(optimizer, train=False)
    set_optimizer_mode(optimizer, train=True)
    assert not all(torch.equal(param, kept) for param, kept in zip(params, before, strict=True)), (
        "the plain round trip is inexact (what the context manager exists for)"
    )


def test_adafactor_uses_the_configured_learning_rate() -> None:
    config = TrainingConfig(optimizer=Optimizer.ADAFACTOR, learning_rate=3e-3)
    optimizer = build_optimizer(resolve_parameter_groups(_groups(), config), config, CPU)
    assert optimizer.param_groups[0]["lr"] == 3e-3
    assert optimizer.param_groups[0]["relative_step"] is False
