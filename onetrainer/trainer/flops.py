"""FLOPs per step and the model FLOP utilisation (MFU) that the progress display and metrics report.

A step's FLOPs are counted once per batch shape (bucket and batch size), by `torch.utils.flop_counter`
over one forward and backward pass of the setup's `predict` and `loss` (matrix multiplications,
convolutions and attention; element-wise work is not counted; bitsandbytes' 4-bit products of nf4
weights, custom operators torch's counter does not know, count as the dense products they compute),
run on fake tensors: no compute, no
memory and no random draw, so the training streams and a resume's exactness are untouched, and the
count costs about a second of host time per shape. It is the model's count: gradient checkpointing
is switched off for it (its recomputation is not useful work) and compiled blocks run eagerly.
Backward counts what the step needs (input gradients through frozen layers, weight gradients of the
trained ones), so a LoRA step counts about two forward passes and a full fine-tune about three. Without the
cache (`data.cache: false`) the step's VAE and text-encoder passes count too: work the GPU does in every
step, which a cached run did once beforehand.

MFU is achieved FLOP/s over the device's peak: the dense (not sparse) tensor-core figure of its spec
sheet at the run's precision (TF32 for fp32 where torch allows it). A GPU missing from `PEAK_TFLOPS`
reports FLOP/s without MFU. A run on the CPU counts nothing (`counted_on`).
"""

from __future__ import annotations

import contextlib
import math
import re
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from onetrainer.util.config.training import Precision

if TYPE_CHECKING:
    import torch

PEAK_TFLOPS: tuple[tuple[str, dict[str, float]], ...] = (
    ("GH200", {"bf16": 989, "fp16": 989, "tf32": 495, "fp32": 67}),
    ("H200 NVL", {"bf16": 835, "fp16": 835, "tf32": 418, "fp32": 60}),
    ("H200", {"bf16": 989, "fp16": 989, "tf32": 495, "fp32": 67}),
    ("H100 NVL", {"bf16": 835, "fp16": 835, "tf32": 418, "fp32": 60}),
    ("H100 PCIe", {"bf16": 756, "fp16": 756, "tf32": 378, "fp32": 51}),
    ("H100", {"bf16": 989, "fp16": 989, "tf32": 495, "fp32": 67}),
    ("A100", {"bf16": 312, "fp16": 312, "tf32": 156, "fp32": 19.5}),
    ("L40S", {"bf16": 362, "fp16": 362, "tf32": 183, "fp32": 91.6}),
    ("L40", {"bf16": 181, "fp16": 181, "tf32": 90.5, "fp32": 90.5}),
    ("L4", {"bf16": 121, "fp16": 121, "tf32": 60, "fp32": 30.3}),
    ("RTX 4090", {"bf16": 165, "fp16": 165, "tf32": 82.6, "fp32": 82.6}),
    ("RTX 3090", {"bf16": 71, "fp16": 71, "tf32": 35.6, "fp32": 35.6}),
    ("RTX A6000", {"bf16": 155, "fp16": 155, "tf32": 77.4, "fp32": 38.7}),
    ("V100", {"fp16": 125, "fp32": 15.7}),
    ("T4", {"fp16": 65, "fp32": 8.1}),
)
"""Dense peak TFLOP/s by a fragment of `torch.cuda.get_device_name()` (a whole word of it: an RTX A1000 is no A100,
a T400 no T4), the more specific fragments first
(spec sheets; fp16 and bf16 with fp32 accumulation, as torch computes; sparsity not counted)."""


def peak_flops(device_name: str, precision: Precision, *, tf32: bool) -> float | None:
    """The device's dense peak FLOP/s at `precision`, or None for a device missing from the table."""
    column = {Precision.BF16: "bf16", Precision.FP16: "fp16"}.get(precision, "tf32" if tf32 else "fp32")
    for fragment, peaks in PEAK_TFLOPS:
        if re.search(rf"(?<![A-Za-z0-9]){re.escape(fragment)}(?![A-Za-z0-9])", device_name):
            peak = peaks.get(column)
            return peak * 1e12 if peak is not None else None
    return None


def device_peak(device: torch.device, precision: Precision) -> float | None:
    """`peak_flops` of a torch device: CUDA GPUs by name; anything else has none."""
    import torch

    if device.type != "cuda":
        return None
    tf32 = torch.get_float32_matmul_precision() != "highest"
    return peak_flops(torch.cuda.get_device_name(device), precision, tf32=tf32)


def counted_on(device: torch.device) -> bool:
    """Whether a run on `device` counts its FLOPs: an accelerator's do. A CPU has no peak to measure the FLOP/s
    against, and on a small model (a demo, a test) the count's second of host time per batch shape outweighs
    the steps themselves."""
    return device.type != "cpu"


WORK_FLAGS = ("is_prior",)
"""Batch flags that change the work but not the shapes: a prior-preservation sample adds a pass without the
LoRA. The loader's flags are in CPU memory, so reading them waits for no device."""


def batch_shape(batch: dict[str, Any]) -> tuple[Any, ...]:
    """What a step's FLOPs depend on: the shapes of the batch's tensors (bucket, batch size, token counts), and
    which `WORK_FLAGS` are set."""
    shapes = tuple(sorted((key, tuple(value.shape)) for key, value in batch.items() if hasattr(value, "shape")))
    flags = tuple(
        (key, bool(batch[key].any())) for key in WORK_FLAGS if key in batch and batch[key].device.type == "cpu"
    )
    return shapes + flags


@contextlib.contextmanager
def without_checkpointing(modules: Iterable[torch.nn.Module]) -> Iterator[None]:
    """Gradient checkpointing off for the block, on the diffusers and transformers modules that use it."""
    switched = [
        module
        for root in modules
        for module in root.modules()
        if getattr(module, "gradient_checkpointing", None) is True
    ]
    for module in switched:
        setattr(module, "gradient_checkpointing", False)  # noqa: B010 - an attribute torch's stubs do not know
    try:
        yield
    finally:
        for module in switched:
            setattr(module, "gradient_checkpointing", True)  # noqa: B010


@contextlib.contextmanager
def plain_four_bit_weights(modules: Iterable[torch.nn.Module]) -> Iterator[None]:
    """bitsandbytes' 4-bit weights as plain parameters holding the same packed data and scales, for the count.

    Fake-tensor passes of torch before 2.13 refuse the operations bitsandbytes runs on its `Params4bit`
    subclass (a real tensor among fake ones): its layer reads only the packed data and `quant_state`, which a
    plain parameter carries as well. Only a process that has imported bitsandbytes can hold such weights.
    """
    if "bitsandbytes" not in sys.modules:
        yield
        return
    import bitsandbytes as bnb
    import torch

    swapped = []
    for root in modules:
        for module in root.modules():
            weight = getattr(module, "weight", None)
            if isinstance(module, bnb.nn.Linear4bit) and isinstance(weight, bnb.nn.Params4bit):
                plain = torch.nn.Parameter(weight.data, requires_grad=False)
                plain.quant_state = weight.quant_state  # type: ignore[attr-defined]
                module._parameters["weight"] = plain
                swapped.append((module, weight))
    try:
        yield
    finally:
        for module, weight in swapped:
            module._parameters["weight"] = weight


def _dense_product(input_shape: Any, *args: Any, out_shape: Any, **kwargs: Any) -> int:
    """An input (..., K) times a weight (N, K): one multiply and one add per output element and K."""
    return 2 * math.prod(out_shape) * input_shape[-1]


def quantised_product_formulas() -> dict[Any, Callable[..., int]]:
    """FLOP formulas for bitsandbytes' 4-bit matrix products, which torch's counter would count as zero.

    Without them an nf4 layer's forward pass counts nothing (its backward pass dequantises and runs a
    plain product, which torch counts), and the MFU of a QLoRA run reads low. Only a process that has
    imported bitsandbytes can hold such layers, so nothing is imported here.
    """
    if "bitsandbytes" not in sys.modules:
        return {}
    import torch

    formulas: dict[Any, Callable[..., int]] = {}
    for name in ("gemm_4bit", "gemv_4bit"):
        try:
            formulas[getattr(torch.ops.bitsandbytes, name)] = _dense_product
        except (AttributeError, RuntimeError):
            continue
    return formulas


def count_flops(run: Callable[[], Any], *, modules: Iterable[torch.nn.Module] = ()) -> int:
    """The FLOPs of `run()` (a forward and backward pass) on fake tensors, with the training RNG untouched."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.utils.flop_counter import FlopCounterMode

    from onetrainer.model_setup.compile import eager
    from onetrainer.util.seeding import preserved_rng

    modules = list(modules)
    with (
        eager(),
        without_checkpointing(modules),
        plain_four_bit_weights(modules),
        preserved_rng(),
        FakeTensorMode(allow_non_fake_inputs=True),
        FlopCounterMode(display=False, custom_mapping=quantised_product_formulas()) as counter,
    ):
        run()
    return int(counter.get_total_flops())


def step_pass(setup: Any, generator: torch.Generator, autocast: Callable[[], Any], trained: list[Any]) -> Callable:
    """One micro-batch's forward and backward pass as the loop runs it, without touching `.grad` or the generator."""
    import torch

    def run(batch: dict[str, Any]) -> None:
        state = generator.get_state()
        try:
            with autocast():
                loss = setup.loss(setup.predict(batch, generator), batch)
            torch.autograd.grad(loss, [param for param in trained if param.requires_grad], allow_unused=True)
        finally:
            generator.set_state(state)

    return run


@dataclass
class StepFlops:
    """The FLOPs of each step, from counts made once per batch shape (see the module docstring).

    `count(batch)` counts one micro-batch; a count that fails turns counting off for the run (with one
    warning): the speed display is not worth a stopped run.
    """

    count: Callable[[dict[str, Any]], int]
    peak: float | None
    """The device's peak FLOP/s, None where unknown (no MFU then)."""
    warn: Callable[[str], None] = lambda message: None
    _known: dict[tuple[Any, ...], int] = field(default_factory=dict)
    _step: int | None = 0
    _failed: bool = False

    @classmethod
    def off(cls) -> StepFlops:
        """Counts nothing, and says nothing (steps report no FLOPs)."""
        return cls(count=lambda batch: 0, peak=None, _step=None, _failed=True)

    @classmethod
    def unavailable(cls, reason: str, *, warn: Callable[[str], None]) -> StepFlops:
        """Counts nothing, having said why once (`reason`: why this model's FLOPs cannot be counted)."""
        warn(f"warning: {reason}, so no FLOP/s or MFU is shown")
        return replace(cls.off(), warn=warn)

    def add(self, batch: dict[str, Any]) -> None:
        """Count one micro-batch of the current step (a known shape costs a dictionary lookup)."""
        if self._failed or self._step is None:
            return
        key = batch_shape(batch)
        if key not in self._known:
            try:
                self._known[key] = self.count(batch)
            except Exception as error:  # noqa: BLE001 - reported once; training goes on without FLOP counts
                self._failed, self._step = True, None
                self.warn(f"warning: FLOPs cannot be counted for this model, so no FLOP/s or MFU is shown ({error})")
                return
        self._step += self._known[key]

    def take(self) -> float | None:
        """The current step's FLOPs (None if they could not be counted), and a fresh count for the next step."""
        flops, self._step = self._step, None if self._failed else 0
        return float(flops) if flops is not None else None

    def utilisation(self, flops_per_second: float | None) -> float | None:
        if flops_per_second is None or self.peak is None or not math.isfinite(flops_per_second):
            return None
        return flops_per_second / self.peak
