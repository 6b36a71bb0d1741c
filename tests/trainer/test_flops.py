"""FLOPs per step, counted once per batch shape on fake tensors, and the peak they are measured against."""

from __future__ import annotations

import copy
import functools
from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from onetrainer.model.diffusion import DiffusionModel
from onetrainer.model_loader.pipeline import load_model
from onetrainer.model_setup.diffusion import DiffusionSetup
from onetrainer.trainer.flops import StepFlops, count_flops, counted_on, peak_flops, step_pass
from onetrainer.util.config.schema import TrainConfig
from onetrainer.util.config.training import Precision
from onetrainer.util.registry import ModuleKind, lookup


@functools.cache
def _base() -> DiffusionModel:
    return load_model("tiny:sd15")


def _setup(method: str, data: dict[str, object] | None = None, **training: object) -> DiffusionSetup:
    config = TrainConfig.model_validate(
        {
            "model": {"type": "sd15", "base": "tiny:sd15"},
            "method": method,
            "training": {"device": "cpu", **training},
            **({"data": data} if data else {}),
        }
    )
    setup = lookup(ModuleKind.SETUP, "sd15")(copy.deepcopy(_base()), config)
    setup.prepare("cpu", torch.float32)
    setup.train()
    return setup


def _batch(setup: DiffusionSetup, side: int = 8) -> dict[str, object]:
    width = setup.model.unet.config.cross_attention_dim
    generator = torch.Generator().manual_seed(0)
    return {
        "latents": torch.randn(2, 4, side, side, generator=generator),
        "text_hidden": torch.randn(2, 77, width, generator=generator),
        "captions": ["a", "b"],
    }


def _reference(setup: DiffusionSetup, batch: dict[str, object]) -> int:
    """torch.utils.flop_counter on the tiny UNet's own forward and backward, for the same inputs."""
    unet = setup.model.unet
    with FlopCounterMode(display=False) as counter:
        prediction = unet(batch["latents"], torch.tensor([500, 10]), encoder_hidden_states=batch["text_hidden"]).sample
        prediction.square().mean().backward()
    unet.zero_grad(set_to_none=True)
    return int(counter.get_total_flops())


def _no_autocast() -> object:
    return torch.autocast("cpu", enabled=False)


@pytest.mark.parametrize("checkpointing", [False, True])
def test_a_full_fine_tunes_count_matches_torchs_flop_counter_on_the_tiny_unet(checkpointing: bool) -> None:
    setup = _setup("full", gradient_checkpointing=checkpointing)
    batch = _batch(setup)
    generator = torch.Generator().manual_seed(1)
    trained = [param for group in setup.parameter_groups() for param in group["params"]]
    ours = count_flops(
        lambda: step_pass(setup, generator, _no_autocast, trained)(batch),
        modules=list(setup.model.components.values()),
    )
    if checkpointing:
        setup.model.unet.disable_gradient_checkpointing()  # the model's FLOPs: no recomputation
    assert ours == _reference(setup, batch) > 0


def test_a_batch_with_prior_preservation_samples_counts_their_pass_without_the_lora(tmp_path: Path) -> None:
    """The batch's prior flags are read on the host inside the fake-tensor pass; a fake result could not be."""
    setup = _setup("lora", data={"concepts": [{"path": str(tmp_path), "type": "prior"}]})
    generator = torch.Generator().manual_seed(1)
    trained = [param for group in setup.parameter_groups() for param in group["params"]]

    def count(flags: list[bool]) -> int:
        batch = {**_batch(setup), "is_prior": torch.tensor(flags)}
        return count_flops(lambda: step_pass(setup, generator, _no_autocast, trained)(batch))

    without, with_prior = count([False, False]), count([True, False])
    assert 0 < without < with_prior, "the target's pass without the LoRA counts"


def test_batches_with_and_without_prior_samples_are_counted_apart() -> None:
    from onetrainer.trainer.flops import batch_shape

    def key(flags: list[bool]) -> tuple[object, ...]:
        return batch_shape({"latents": torch.zeros(2, 4, 8, 8), "is_prior": torch.tensor(flags)})

    assert key([False, False]) != key([True, False]) == key([False, True]) == key([True, True])


def test_the_count_touches_no_weights_gradients_or_random_streams() -> None:
    setup = _setup("lora")
    batch = _batch(setup)
    generator = torch.Generator().manual_seed(1)
    trained = [param for group in setup.parameter_groups() for param in group["params"]]
    before = {key: value.clone() for key, value in setup.trainable_state_dict().items()}
    state, global_state = generator.get_state(), torch.get_rng_state()
    lora = count_flops(lambda: step_pass(setup, generator, _no_autocast, trained)(batch))
    assert torch.equal(generator.get_state(), state)
    assert torch.equal(torch.get_rng_state(), global_state)
    assert all(param.grad is None for param in trained)
    assert all(torch.equal(value, before[key]) for key, value in setup.trainable_state_dict().items())
    # LoRA's backward skips the frozen weights' gradients: fewer FLOPs than a full fine-tune's.
    full = _setup("full")
    full_trained = [param for group in full.parameter_groups() for param in group["params"]]
    assert lora < count_flops(lambda: step_pass(full, generator, _no_autocast, full_trained)(batch))


def test_each_batch_shape_is_counted_once_and_a_step_sums_its_batches() -> None:
    counted: list[tuple[int, ...]] = []

    def count(batch: dict[str, torch.Tensor]) -> int:
        counted.append(tuple(batch["latents"].shape))
        return int(batch["latents"].numel())

    flops = StepFlops(count=count, peak=1000.0)
    small, large = {"latents": torch.zeros(1, 4, 2, 2)}, {"latents": torch.zeros(1, 4, 4, 4)}
    flops.add(small)
    flops.add(small)
    assert flops.take() == 32.0
    flops.add(large)
    flops.add(small)
    assert flops.take() == 80.0
    assert counted == [(1, 4, 2, 2), (1, 4, 4, 4)]
    assert flops.utilisation(500.0) == 0.5
    assert StepFlops(count=count, peak=None).utilisation(500.0) is None


def test_a_count_that_fails_turns_counting_off_with_one_warning() -> None:
    warnings: list[str] = []

    def count(batch: dict[str, torch.Tensor]) -> int:
        raise RuntimeError("no fake kernel")

    flops = StepFlops(count=count, peak=None, warn=warnings.append)
    flops.add({"latents": torch.zeros(1)})
    assert flops.take() is None
    flops.add({"latents": torch.zeros(2)})
    assert flops.take() is None
    assert len(warnings) == 1
    assert "no fake kernel" in warnings[0]


def test_a_model_that_cannot_be_counted_says_so_once_and_counts_nothing() -> None:
    warnings: list[str] = []
    reason = "a model sharded over the ranks (FSDP) has no FLOP count"
    flops = StepFlops.unavailable(reason, warn=warnings.append)
    assert warnings == [f"warning: {reason}, so no FLOP/s or MFU is shown"]
    flops.add({"latents": torch.zeros(1, 4, 8, 8)})
    assert flops.take() is None
    assert flops.utilisation(1e12) is None
    assert len(warnings) == 1


@pytest.mark.parametrize(
    ("name", "precision", "tf32", "tflops"),
    [
        ("NVIDIA H200", Precision.BF16, False, 989),
        ("NVIDIA H100 80GB HBM3", Precision.BF16, False, 989),
        ("NVIDIA H100 PCIe", Precision.FP16, False, 756),
        ("NVIDIA A100-SXM4-80GB", Precision.FP32, True, 156),
        ("NVIDIA A100-SXM4-80GB", Precision.FP32, False, 19.5),
        ("NVIDIA GeForce RTX 4090", Precision.BF16, False, 165),
        ("NVIDIA L40S", Precision.BF16, False, 362),
        ("NVIDIA L4", Precision.BF16, False, 121),
        ("Tesla V100-SXM2-16GB", Precision.BF16, False, None),
        ("Tesla T4", Precision.FP16, False, 65),
        ("NVIDIA RTX A1000", Precision.BF16, False, None),
        ("NVIDIA T400 4GB", Precision.FP16, False, None),
        ("Some Future GPU", Precision.BF16, False, None),
    ],
)
def test_peaks_are_dense_spec_figures_by_gpu_name_and_precision(
    name: str, precision: Precision, tf32: bool, tflops: float | None
) -> None:
    peak = peak_flops(name, precision, tf32=tf32)
    assert peak == (tflops * 1e12 if tflops is not None else None)


def test_a_flow_matching_step_is_counted_as_torchs_flop_counter_counts_it_run_for_real() -> None:
    # FLUX.1: packed latents, position ids, guidance and a resolution-shifted flow-matching objective.
    from onetrainer.model_setup.flux import POOLED_KEY, TEXT_KEY

    config = TrainConfig.model_validate(
        {"model": {"type": "flux-dev", "base": "tiny:flux-dev"}, "method": "full", "training": {"device": "cpu"}}
    )
    setup = lookup(ModuleKind.SETUP, "flux-dev")(load_model("tiny:flux-dev"), config)
    setup.prepare("cpu", torch.float32)
    setup.train()
    transformer = setup.model.denoiser
    generator = torch.Generator().manual_seed(0)
    batch = {
        "latents": torch.randn(2, 16, 8, 8, generator=generator),
        TEXT_KEY: torch.randn(2, 7, transformer.config.joint_attention_dim, generator=generator),
        POOLED_KEY: torch.randn(2, transformer.config.pooled_projection_dim, generator=generator),
        "captions": ["a", "b"],
    }
    trained = [param for group in setup.parameter_groups() for param in group["params"]]
    one_pass = step_pass(setup, torch.Generator().manual_seed(1), _no_autocast, trained)
    counted = count_flops(lambda: one_pass(batch), modules=[transformer])
    with FlopCounterMode(display=False) as counter:
        one_pass(batch)
    assert counted == counter.get_total_flops() > 0
    assert all(param.grad is None for param in trained)


def test_nf4_layers_count_as_the_dense_layers_they_replace() -> None:
    # bitsandbytes' 4-bit product is a custom operator torch's counter does not know; uncounted, a
    # QLoRA step's forward pass through its frozen layers would count zero and its MFU would read low.
    pytest.importorskip("bitsandbytes")
    from onetrainer.model.quantised import quantise_linear

    torch.manual_seed(0)
    dense = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.Linear(128, 96), torch.nn.Linear(96, 64))
    for layer in dense[1:]:
        layer.requires_grad_(False)
    quantised = copy.deepcopy(dense)
    for index in (1, 2):
        quantised[index] = quantise_linear(quantised[index], "nf4", torch.float32)
    inputs = torch.randn(3, 5, 64)

    def step(model: torch.nn.Module) -> int:
        return count_flops(lambda: model(inputs).square().mean().backward(), modules=[model])

    # forward: three products; backward: the input gradients of the two frozen layers, the trained layer's weights
    assert (
        step(quantised)
        == step(dense)
        == 2 * 15 * (64 * 128 + 128 * 96 + 96 * 64) + 2 * 15 * (128 * 96 + 96 * 64) + 2 * 15 * 64 * 128
    )


def test_a_run_on_the_cpu_counts_no_flops_and_shows_none(
    tmp_path: Path, shapes_dataset_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from onetrainer.trainer import start
    from onetrainer.trainer.components import build_parts
    from onetrainer.trainer.loop import train
    from onetrainer.trainer.metrics import read_metrics
    from onetrainer.util.config.loader import load_config
    from onetrainer.util.config.presets import presets_dir

    assert counted_on(torch.device("cuda"))
    assert counted_on(torch.device("meta"))
    assert not counted_on(torch.device("cpu"))

    def fail(*args: object, **kwargs: object) -> int:
        raise AssertionError("a CPU run counted FLOPs")

    monkeypatch.setattr(start, "count_flops", fail)
    events: list[dict[str, object]] = []
    config = load_config(
        presets_dir() / "demo.yaml",
        [
            f"data.concepts.0.path={shapes_dataset_dir}",
            f"workspace={tmp_path / 'workspace'}",
            f"saving.output={tmp_path / 'model.safetensors'}",
            "training.max_steps=2",
            "sampling.before_training=false",
            "sampling.every=never",
            "logging.tensorboard=false",
        ],
    )
    assert train(config, build=build_parts, progress=events.append).step == 2
    records = read_metrics(tmp_path / "workspace" / "metrics.jsonl")
    assert [(record["flops_per_s"], record["mfu"]) for record in records] == [(None, None), (None, None)]
    assert not any("FLOP" in str(event.get("message", "")) for event in events)  # and no warning about it
