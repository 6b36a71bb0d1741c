"""`train --dry-run`'s memory estimate against real training steps of the tiny models on the CPU.

The estimate simulates one step on the meta device (`model_setup.activations`); here the same step runs for
real, on the CPU, and every tensor it creates is counted while it lives. A CPU has no memory statistics like
CUDA's, so the count is of tensor storages, as `torch.cuda.max_memory_allocated` counts the GPU's allocations.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pytest
import torch

from onetrainer.model.quantised import plain_tensors
from onetrainer.model_setup.activations import AUTOCAST_FP32_FUNCTIONS, live_bytes_mode
from onetrainer.model_setup.estimate import estimate_memory
from onetrainer.util.config.loader import validate
from onetrainer.util.dtypes import torch_dtype
from onetrainer.util.family import families, get_family
from onetrainer.util.registry import ModuleKind, lookup

if TYPE_CHECKING:
    from onetrainer.model.diffusion import DiffusionModel

RESOLUTION = 256
BATCH = 2
TINY = sorted((spec.name, sorted(spec.tiny)[0]) for spec in families() if spec.tiny)
"""Every family with a tiny model, and the tiny model's kind."""
SETTINGS = {
    "lora, fp32 weights, bf16 autocast": {"method": "lora", "model": {"dtype": "fp32"}},
    "lora, fp8 weights, checkpointing": {
        "method": "lora",
        "quantised": "fp8",
        "training": {"gradient_checkpointing": True},
    },
    "full, fp32 masters, checkpointing": {
        "method": "full",
        "model": {"dtype": "fp32"},
        "training": {"gradient_checkpointing": True},
    },
}


def _config(family: str, setting: dict[str, Any], tiny: str | None = None, resolution: int = RESOLUTION) -> Any:
    training = {"batch_size": BATCH, "precision": "bf16", **setting.get("training", {})}
    settings: dict[str, Any] = {
        "model": {"type": family, "base": f"tiny:{tiny or family}", "dtype": "bf16", **setting.get("model", {})},
        "method": setting["method"],
        "lora": {"rank": 4},
        "data": {"resolution": resolution},
        "training": training,
    }
    if "quantised" in setting:
        settings["parts"] = {get_family(family).denoiser.name: {"weight_dtype": setting["quantised"]}}
    if "parts" in setting:
        settings["parts"] = setting["parts"]
    return validate(settings, check_paths=False)


def _storage_bytes(tensors: list[torch.Tensor]) -> int:
    distinct = {tensor.untyped_storage()._cdata: tensor.untyped_storage().nbytes() for tensor in tensors}
    return sum(distinct.values())


def _cuda_float32_list(monkeypatch: pytest.MonkeyPatch) -> None:
    """Run CUDA autocast's float32 operations (`AUTOCAST_FP32_FUNCTIONS`) in fp32, which the CPU's autocast keeps
    in bf16: then a CPU step under autocast keeps the tensors a GPU step keeps. Patched in `torch.nn.functional`,
    where the layers look them up, so that checkpointing's recomputation casts as well."""
    import torch.nn.functional as F

    def upcast(value: Any) -> Any:
        return value.float() if isinstance(value, torch.Tensor) and value.is_floating_point() else value

    def in_fp32(function: Callable[..., Any]) -> Callable[..., Any]:
        def run(*args: Any, **kwargs: Any) -> Any:
            return function(*(upcast(value) for value in args), **{key: upcast(v) for key, v in kwargs.items()})

        return run

    for name in AUTOCAST_FP32_FUNCTIONS:
        monkeypatch.setattr(F, name, in_fp32(getattr(F, name)))


def _measured_peak(
    model: DiffusionModel, config: Any, monkeypatch: pytest.MonkeyPatch, *, foreach: bool = False
) -> int:
    """The peak tensor bytes of a real second training step (the first makes the optimizer's state): the
    denoiser's weights, then whatever the step creates, counted while it lives, under autocast as a GPU runs
    it. The captions are encoded before, as the cache would have them. The AdamW step is per tensor, as a fused
    one is, or with `foreach` over all tensors at once, as torch's default on CUDA is."""
    setup = lookup(ModuleKind.SETUP, config.model.type)(model, config)
    setup.prepare("cpu", torch_dtype(config.model.dtype))
    denoiser = model.denoiser
    existing = [plain for tensor in [*denoiser.parameters(), *denoiser.buffers()] for plain in plain_tensors(tensor)]
    groups = [{"params": group["params"], "lr": 1e-3} for group in setup.parameter_groups()]
    optimizer = torch.optim.AdamW(groups, foreach=foreach)
    resolution = config.data.resolution
    side = resolution // 8
    generator = torch.Generator().manual_seed(0)
    batch: dict[str, Any] = {
        "latents": torch.randn(BATCH, model.spec.latent_channels, side, side, generator=generator),
        "captions": ["a red circle"] * BATCH,
        "original_size": torch.tensor([(resolution, resolution)] * BATCH),
        "crop_top_left": torch.tensor([(0, 0)] * BATCH),
        "target_size": torch.tensor([(resolution, resolution)] * BATCH),
    }
    setup.train()
    conditioner = setup.text_encoder()
    assert conditioner is not None
    with torch.no_grad():
        batch.update(conditioner.encode_for_training(batch["captions"]))
    _cuda_float32_list(monkeypatch)
    counter = live_bytes_mode([*existing, *(value for value in batch.values() if isinstance(value, torch.Tensor))])
    with counter:
        for step in range(2):
            counter.peak = counter.live  # the second step's peak, over the optimizer's state
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = setup.loss(setup.predict(batch, torch.Generator().manual_seed(step)), batch)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            del loss
    return _storage_bytes(existing) + counter.peak


@pytest.mark.parametrize("setting", list(SETTINGS))
@pytest.mark.parametrize(("family", "tiny"), TINY)
def test_the_estimate_is_near_the_peak_of_a_real_step(
    family: str,
    tiny: str,
    setting: str,
    tiny_base: Callable[[str], DiffusionModel],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Within 15 % below and 25 % above: the estimate adds the gradients of a full fine-tune to the
    activations' peak, which come at other times of the step. Before the estimate simulated the backward pass,
    LoRA on the transformers was 20 to 40 % low, and without checkpointing every weight counted twice."""
    config = _config(family, SETTINGS[setting], tiny)
    estimate = estimate_memory(config)
    estimated = estimate.peak - sum(line.bytes for line in estimate.gpu if line.kind == "overhead")
    measured = _measured_peak(copy.deepcopy(tiny_base(tiny)), config, monkeypatch)
    assert 0.85 <= estimated / measured <= 1.25, f"estimated {estimated / 1e6:.2f} MB, measured {measured / 1e6:.2f} MB"


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_a_foreach_step_counts_its_temporaries_where_they_exceed_the_activations(
    family: str, tiny_base: Callable[[str], DiffusionModel], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A full fine-tune of the tiny UNets at 64 px: AdamW's foreach step (`fused: false`, as torch's default on
    CUDA runs it) holds the square root of its second moments, a copy of the weights' size, after the
    activations are gone: the step's peak, which the estimate then gives within 5 % (more than 5 % low
    without that line)."""
    setting = {
        "method": "full",
        "model": {"dtype": "fp32"},
        "training": {"gradient_checkpointing": True, "optimizer_args": {"fused": False}},
    }
    config = _config(family, setting, resolution=64)
    estimate = estimate_memory(config)
    (line,) = [line for line in estimate.gpu if "temporaries" in line.what]
    estimated = estimate.peak - sum(line.bytes for line in estimate.gpu if line.kind == "overhead")
    measured = _measured_peak(copy.deepcopy(tiny_base(family)), config, monkeypatch, foreach=True)
    assert 0.95 <= estimated / measured <= 1.05, f"estimated {estimated / 1e6:.2f} MB, measured {measured / 1e6:.2f} MB"
    assert (estimated - line.bytes) / measured < 0.95

    per_tensor = _config(family, {**setting, "training": {"gradient_checkpointing": True}}, resolution=64)
    assert not [line for line in estimate_memory(per_tensor).gpu if "temporaries" in line.what], "fused: none"


def test_the_moving_average_counts_as_fp32_where_it_lives() -> None:
    """An fp32 copy of every trained tensor (bf16 ones too): beside the weights, or in CPU memory."""

    def lines(estimate: Any, kind: str) -> tuple[int, int]:
        return tuple(sum(line.bytes for line in side if line.kind == kind) for side in (estimate.gpu, estimate.cpu))

    full = {
        "method": "full",
        "model": {"dtype": "fp32"},
        "parts": {"unet": {"weight_dtype": "bf16", "offload_blocks": 2}},
        "training": {"gradient_checkpointing": True, "stochastic_rounding": True},
    }
    plain = estimate_memory(_config("sd15", full))
    gpu_trained, cpu_trained = lines(plain, "trained")  # bf16: two bytes an element
    assert lines(plain, "average") == (0, 0)
    beside = _config("sd15", {**full, "training": {**full["training"], "ema": {"enabled": True}}})
    assert lines(estimate_memory(beside), "average") == (2 * gpu_trained, 2 * cpu_trained)
    in_cpu = _config("sd15", {**full, "training": {**full["training"], "ema": {"enabled": True, "device": "cpu"}}})
    assert lines(estimate_memory(in_cpu), "average") == (0, 2 * (gpu_trained + cpu_trained))


def test_the_counter_counts_storages_while_they_live() -> None:
    kept = torch.zeros(10)
    counter = live_bytes_mode([kept])
    with counter:
        first = torch.ones(1000)  # 4000 bytes
        view = first[:10]  # the same storage
        second = torch.ones(250, dtype=torch.float64)  # 2000 bytes
        assert counter.live == 6000
        del first, view, second
        third = kept + 1  # 40 bytes; `kept` itself is not counted
        assert counter.live == 40
    assert counter.peak == 6000
    assert third.sum() == 10


def test_activation_offload_moves_what_is_saved_to_cpu_memory() -> None:
    checkpointing = {"gradient_checkpointing": True}

    def activations(estimate: Any, where: str) -> int:
        return sum(line.bytes for line in getattr(estimate, where) if line.kind == "activations")

    plain = estimate_memory(_config("sd15", {"method": "lora", "training": checkpointing}))
    moved = estimate_memory(
        _config("sd15", {"method": "lora", "training": {**checkpointing, "activation_offload": True}})
    )
    assert activations(moved, "gpu") < activations(plain, "gpu")
    assert activations(moved, "cpu") > 0


def test_what_activation_offload_moves_is_counted_the_same_every_time() -> None:
    """Each saved tensor gets a CPU copy of its own (`save_on_cpu`); counting by storage address skipped some
    whose address a freed one had had, a different number each time."""
    settings = {"method": "lora", "training": {"gradient_checkpointing": True, "activation_offload": True}}
    moved = [sum(line.bytes for line in estimate_memory(_config("sd15", settings)).cpu) for _ in range(3)]
    assert moved[0] > 0
    assert moved == [moved[0]] * 3


def test_a_fully_trained_offloaded_block_casts_its_weights_at_each_use() -> None:
    """Autocast caches the casts of the weights themselves for the whole forward pass, but an offloaded block
    computes with copies, whose casts live only while the block runs."""

    def activations(blocks: float) -> int:
        setting = {
            "method": "full",
            "model": {"dtype": "fp32"},
            "training": {"gradient_checkpointing": True},
        }
        settings = _config("sd15", setting).model_dump(mode="json")
        settings["data"]["resolution"] = 64  # where the weights' casts outweigh the activations
        config = validate({**settings, "parts": {"unet": {"offload_blocks": blocks}}}, check_paths=False)
        return sum(line.bytes for line in estimate_memory(config).gpu if line.kind == "activations")

    assert activations(1.0) < 0.8 * activations(0.0)


def test_frozen_text_encoders_count_on_the_gpu_while_the_text_is_not_cached() -> None:
    """Training one SDXL encoder leaves the text uncached: the frozen one runs in every step, on the GPU."""

    def on_gpu(estimate: Any) -> set[str]:
        return {line.what.split(" ")[0] for line in estimate.gpu if line.kind == "weights"}

    plain = estimate_memory(_config("sdxl", {"method": "lora"}))
    assert on_gpu(plain) == {"unet"}
    assert "text_encoder_2: fills the cache, then waits in CPU memory" in plain.notes
    one = estimate_memory(_config("sdxl", {"method": "lora", "parts": {"text_encoder": {"train": True}}}))
    assert on_gpu(one) == {"unet", "text_encoder", "text_encoder_2"}
    assert not any("text_encoder" in note for note in one.notes)
