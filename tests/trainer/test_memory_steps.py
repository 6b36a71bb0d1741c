"""The memory-saving step strategies: fused backward, stochastic rounding, optimizer states in CPU memory."""

from __future__ import annotations

import copy
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

import onetrainer
from onetrainer.trainer.optimizers import build_optimizer
from onetrainer.trainer.precision import MixedPrecision
from onetrainer.trainer.rounding import stochastic_round_to_bf16
from onetrainer.trainer.step import FusedStep, build_step
from onetrainer.trainer.updates import offload_to_cpu
from onetrainer.util.config.training import Precision, TrainingConfig

CPU = torch.device("cpu")


def _model(seed: int = 0, dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 4)).to(dtype)


def _batches(count: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(1)
    return [(torch.randn(5, 8, generator=generator), torch.randn(5, 4, generator=generator)) for _ in range(count)]


def _run(model: torch.nn.Module, training: TrainingConfig, steps: int = 3, offload: bool = False) -> list[float]:
    """Train `model` through the strategy `training` asks for, as the loop drives it; returns the norms."""
    trained = list(model.parameters())
    groups = [{"params": trained, "lr": training.learning_rate, "name": "model"}]
    masters = None
    if offload:
        groups, masters = offload_to_cpu(groups, CPU)
    optimizer = build_optimizer(groups, training, CPU)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    strategy = build_step(training, optimizer, scheduler, MixedPrecision(Precision.FP32, CPU), trained, masters=masters)
    norms = []
    for inputs, targets in _batches(steps):
        strategy.backward(torch.nn.functional.mse_loss(model(inputs).float(), targets))
        if isinstance(strategy, FusedStep):
            assert all(param.grad is None for param in trained), "no gradient outlives its update"
        norms.append(strategy.measure().item())
        strategy.apply()
    return norms


def _training(**settings: object) -> TrainingConfig:
    return TrainingConfig.model_validate({"learning_rate": 1e-2, "max_grad_norm": None, **settings})


def test_fused_backward_equals_the_plain_step_for_adamw_without_clipping() -> None:
    plain, fused = _model(), _model()
    plain_norms = _run(plain, _training())
    fused_norms = _run(fused, _training(fused_backward=True))
    assert fused_norms == pytest.approx(plain_norms, rel=1e-6)
    for ours, reference in zip(fused.parameters(), plain.parameters(), strict=True):
        assert torch.allclose(ours, reference, rtol=0, atol=1e-7)
    assert not torch.equal(plain[0].weight, _model()[0].weight), "the weights moved"


def test_fused_backward_updates_one_tensor_at_a_time_whatever_thread_its_hook_runs_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """On CUDA, autograd runs the hooks of GPU weights on its own thread and those of CPU-held weights on the
    caller's: their updates share one optimizer, so they must not interleave."""
    import threading
    import time

    model = _model()
    trained = list(model.parameters())
    optimizer = build_optimizer([{"params": trained, "lr": 1e-2, "name": "model"}], _training(), CPU)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    strategy = build_step(
        _training(fused_backward=True), optimizer, scheduler, MixedPrecision(Precision.FP32, CPU), trained
    )
    assert isinstance(strategy, FusedStep)
    update, running, most = strategy.updater.update, [0], [0]

    def slow(param: torch.nn.Parameter) -> None:
        running[0] += 1
        most[0] = max(most[0], running[0])
        time.sleep(0.05)  # lets another thread in, as a GPU wait would
        update(param)
        running[0] -= 1

    monkeypatch.setattr(strategy.updater, "update", slow)
    for param in trained:
        param.grad = torch.ones_like(param)
    threads = [threading.Thread(target=strategy._ready, args=(param,)) for param in trained]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert most[0] == 1
    assert all(param.grad is None for param in trained), "every tensor was updated"


FUSED_VARIANTS = {
    "adamw": {},
    "adamw-fused-kernel": {"optimizer_args": {"fused": True}},
    "adafactor-stochastic-rounding": {"optimizer": "adafactor", "stochastic_rounding": True},
    "adamw8bit-stochastic-rounding": {"optimizer": "adamw8bit_ao", "stochastic_rounding": True},
}
"""Optimizers with and without torch's fused kernel, and the per-tensor update of stochastic rounding (as the
full fine-tuning memory presets use it)."""

HOST_READS = ("item", "tolist", "cpu", "numpy", "__float__", "__int__", "__bool__", "__index__")
PACKAGE = Path(onetrainer.__file__).parent
"""Reads made by onetrainer's code count; the optimizers' own (torch keeps a non-fused AdamW's step count in
CPU memory, so its reads wait for nothing) do not."""


@pytest.mark.parametrize("variant", list(FUSED_VARIANTS))
def test_the_fused_backward_reads_nothing_back_per_tensor_and_reports_a_non_finite_gradient(
    monkeypatch: pytest.MonkeyPatch, variant: str
) -> None:
    """On a GPU each read to the host waits for the queue to drain: one per tensor would stall it thousands of
    times a step. A non-finite gradient is not held back (the loop stops the run on the pass's norm)."""
    dtype = torch.bfloat16 if FUSED_VARIANTS[variant].get("stochastic_rounding") else torch.float32
    model = _model(dtype=dtype)
    trained = list(model.parameters())
    training = _training(fused_backward=True, **FUSED_VARIANTS[variant])
    optimizer = build_optimizer([{"params": trained, "lr": 1e-2, "name": "model"}], training, CPU)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    strategy = build_step(training, optimizer, scheduler, MixedPrecision(Precision.FP32, CPU), trained)
    assert isinstance(strategy, FusedStep)
    model[0].weight.register_hook(lambda grad: grad * float("nan"))  # a gradient late in the backward pass
    inputs, targets = _batches(1)[0]
    loss = torch.nn.functional.mse_loss(model(inputs.to(dtype)).float(), targets)
    reads: list[str] = []

    def counting(name: str, original: Any) -> Any:
        def read(tensor: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
            caller = sys._getframe(1).f_code.co_filename
            if Path(caller).is_relative_to(PACKAGE):
                reads.append(f"{name} in {Path(caller).name}")
            return original(tensor, *args, **kwargs)

        return read

    with monkeypatch.context() as patch:
        for name in HOST_READS:
            patch.setattr(torch.Tensor, name, counting(name, getattr(torch.Tensor, name)))
        assert not strategy.updated_in_backward
        strategy.backward(loss)
    assert reads == []
    assert strategy.updated_in_backward, "the weights changed inside the backward pass"
    assert not torch.isfinite(strategy.measure())
    strategy.apply()
    assert not strategy.updated_in_backward


def test_fused_backward_is_refused_when_gradients_are_averaged_over_ranks() -> None:
    """Each tensor would be updated by its own rank's gradient before the ranks' gradients are averaged."""
    from onetrainer.trainer.step import PlainStep
    from onetrainer.util.errors import UserError

    model = _model()
    trained = list(model.parameters())
    optimizer = build_optimizer([{"params": trained, "lr": 1e-2, "name": "model"}], _training(), CPU)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    precision = MixedPrecision(Precision.FP32, CPU)

    def average(parameters: list[torch.nn.Parameter]) -> None:
        pass

    with pytest.raises(UserError, match="does not work with several GPUs") as caught:
        build_step(_training(fused_backward=True), optimizer, scheduler, precision, trained, average=average)
    assert caught.value.where == "training.fused_backward"
    plain = build_step(_training(stochastic_rounding=True), optimizer, scheduler, precision, trained, average=average)
    assert isinstance(plain, PlainStep)
    assert plain.average is average
    assert plain.updater is not None, "the other levers keep their per-tensor update on several ranks"


def test_optimizer_states_in_cpu_memory_give_the_plain_result() -> None:
    plain, offloaded = _model(), _model()
    _run(plain, _training())
    _run(offloaded, _training(optimizer_offload=True), offload=True)
    for ours, reference in zip(offloaded.parameters(), plain.parameters(), strict=True):
        assert torch.allclose(ours, reference, rtol=0, atol=1e-7)


def test_offloaded_optimizer_keeps_its_state_on_masters_in_cpu_memory() -> None:
    model = _model()
    groups, masters = offload_to_cpu([{"params": list(model.parameters()), "lr": 1e-2}], CPU)
    optimizer = torch.optim.AdamW(groups)
    assert all(master is not param for param, master in masters.items())
    assert [param for group in optimizer.param_groups for param in group["params"]] == list(masters.values())


def test_stochastic_rounding_is_unbiased() -> None:
    generator = torch.Generator().manual_seed(0)
    values = torch.randn(64, generator=generator) * torch.logspace(-3, 3, 64)
    bits = values.view(torch.int32) & -(1 << 16)
    toward_zero, away = bits.view(torch.float32), (bits + (1 << 16)).view(torch.float32)
    draws = torch.stack([stochastic_round_to_bf16(values, generator) for _ in range(4000)])
    assert draws.dtype == torch.bfloat16
    draws = draws.float()
    assert torch.all((draws == toward_zero) | (draws == away)), "always one of the two bf16 neighbours"
    gap = (away - toward_zero).abs()
    error = (draws.mean(0) - values).abs()
    assert torch.all(error <= 4 * gap / (2 * 4000**0.5)), (error / gap).max()
    nearest = values.to(torch.bfloat16).float()
    assert (draws.mean(0) - values).abs().mean() < (nearest - values).abs().mean() / 4


@pytest.mark.parametrize("optimizer", ["adamw", "adafactor"])
def test_stochastic_rounding_keeps_updates_below_bf16_resolution(optimizer: str) -> None:
    """bf16 weights of 1.0 with updates of 1e-4 (a fortieth of bf16's step there): rounded to nearest they never
    move; rounded stochastically their mean follows the fp32 run, and they stay bf16."""

    def train(dtype: torch.dtype, **settings: object) -> torch.nn.Parameter:
        weight = torch.nn.Parameter(torch.ones(20_000, dtype=dtype))
        stored = weight.data  # held, so that no new tensor can take its address
        training = _training(optimizer=optimizer, learning_rate=1e-4, weight_decay=0.0, **settings)
        opt = build_optimizer([{"params": [weight], "lr": 1e-4}], training, CPU)
        scheduler = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0)
        strategy = build_step(training, opt, scheduler, MixedPrecision(Precision.FP32, CPU), [weight])
        for _ in range(20):
            strategy.backward(weight.float().sum())
            strategy.measure()
            strategy.apply()
        # updated in place: a pinned master (an offloaded block's) must stay pinned
        assert weight.data_ptr() == stored.data_ptr()
        return weight

    reference = train(torch.float32).detach().mean()
    nearest = train(torch.bfloat16)
    rounded = train(torch.bfloat16, stochastic_rounding=True)
    assert torch.all(nearest == 1.0), "round-to-nearest loses every update"
    assert reference < 1.0 - 1e-3
    assert rounded.dtype == torch.bfloat16
    assert rounded.detach().float().mean().item() == pytest.approx(reference.item(), abs=2e-4)


def test_adamw8bit_from_torchao_trains_on_the_cpu() -> None:
    model = _model()
    before = copy.deepcopy(model)
    _run(model, _training(optimizer="adamw8bit_ao"))
    assert not torch.equal(model[0].weight, before[0].weight)
    assert all(torch.isfinite(param).all() for param in model.parameters())


def test_a_restored_optimizer_keeps_the_fp32_state_of_bf16_weights() -> None:
    def optimizer_for(weight: torch.nn.Parameter) -> torch.optim.Optimizer:
        return build_optimizer([{"params": [weight], "lr": 1e-2}], _training(stochastic_rounding=True), CPU)

    weight = torch.nn.Parameter(torch.ones(64, dtype=torch.bfloat16))
    optimizer = optimizer_for(weight)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    strategy = build_step(
        _training(stochastic_rounding=True), optimizer, scheduler, MixedPrecision(Precision.FP32, CPU), [weight]
    )
    strategy.backward((weight.float() * torch.linspace(0, 1, 64)).sum())
    strategy.measure()
    strategy.apply()
    saved = optimizer.state_dict()
    assert saved["state"][0]["exp_avg"].dtype == torch.float32
    restored = optimizer_for(torch.nn.Parameter(weight.detach().clone()))
    restored.load_state_dict(saved)
    state = next(iter(restored.state.values()))
    assert state["exp_avg"].dtype == torch.float32
    assert torch.equal(state["exp_avg_sq"], saved["state"][0]["exp_avg_sq"])


@pytest.mark.parametrize("max_norm", [None, 0.01])
def test_the_gradient_norm_and_clipping_equal_torchs(max_norm: float | None) -> None:
    from onetrainer.trainer.step import clip_gradients

    ours, reference = _model(), _model()
    for model in (ours, reference):
        inputs, targets = _batches(1)[0]
        torch.nn.functional.mse_loss(model(inputs), targets).backward()
    norm = clip_gradients(list(ours.parameters()), max_norm)
    if max_norm is None:
        expected = torch.nn.utils.get_total_norm([param.grad for param in reference.parameters()])
    else:
        expected = torch.nn.utils.clip_grad_norm_(reference.parameters(), max_norm)
    assert torch.equal(norm, expected)
    assert all(torch.equal(a.grad, b.grad) for a, b in zip(ours.parameters(), reference.parameters(), strict=True))


@pytest.mark.gpu
def test_gradients_on_the_gpu_and_in_cpu_memory_are_measured_without_waiting_for_the_gpu() -> None:
    """A full fine-tune's offloaded blocks have their gradients on the CPU: one value per device moves, not one
    per tensor, in the plain step's norm and in the fused backward pass's."""
    from onetrainer.trainer.step import total_norm

    generator = torch.Generator().manual_seed(0)
    grads = [torch.randn(64, 64, generator=generator) for _ in range(6)]
    mixed = [grad.cuda() if index % 2 else grad for index, grad in enumerate(grads)]
    expected = torch.nn.utils.get_total_norm(grads)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        norm = total_norm(mixed)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert norm.device.type == "cuda"
    assert norm.cpu().item() == pytest.approx(expected.item(), rel=1e-5)

    model = _model().cuda()
    model[0].cpu()  # the first layer's gradients come last, in CPU memory
    trained = list(model.parameters())
    training = _training(fused_backward=True)
    optimizer = build_optimizer([{"params": trained, "lr": 1e-2, "name": "model"}], training, CPU)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    strategy = build_step(training, optimizer, scheduler, MixedPrecision(Precision.FP32, CPU), trained)
    inputs, targets = _batches(1)[0]
    loss = torch.nn.functional.mse_loss(model[2](model[1](model[0](inputs).cuda())), targets.cuda())
    strategy.backward(loss)
    assert {square.device.type for square in strategy._squares.values()} == {"cpu", "cuda"}
    assert strategy.measure().device.type == "cuda"


@pytest.mark.gpu
def test_on_a_gpu_the_optimizer_masters_share_one_page_locked_buffer() -> None:
    """Pinned tensor by tensor they would take up to twice their size in RAM (`util.pinned`)."""
    model = _model().cuda()
    trained = list(model.parameters())
    model[0].cpu()  # an offloaded block's weight is its own master
    groups, masters = offload_to_cpu([{"params": trained, "lr": 1e-2}], torch.device("cuda"))

    assert masters[trained[0]] is trained[0]
    copied = [masters[param] for param in trained[2:]]
    assert all(master.device.type == "cpu" and master.is_pinned() for master in copied)
    assert len({master.untyped_storage().data_ptr() for master in copied}) == 1
    assert all(torch.equal(masters[param].cuda(), param.detach()) for param in trained[2:])
    assert all(held is masters[param] for held, param in zip(groups[0]["params"], trained, strict=True))
