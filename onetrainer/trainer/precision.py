"""Mixed precision: autocast for the forward pass, and fp16's loss scaling around backward and step.

Trained weights stay fp32 (the optimizer would lose small updates in half precision); only the
forward pass runs in fp16 or bf16. fp16's narrow range needs a gradient scaler: it multiplies the loss
before backward, unscales before clipping, and skips a step whose gradients overflowed. bf16 and fp32
need none, and then every method here is a plain pass-through.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

from onetrainer.util.config.training import Precision
from onetrainer.util.errors import UserError

if TYPE_CHECKING:
    import torch


def torch_dtype(precision: Precision) -> torch.dtype:
    import torch

    return {Precision.FP32: torch.float32, Precision.FP16: torch.float16, Precision.BF16: torch.bfloat16}[precision]


class MixedPrecision:
    def __init__(self, precision: Precision, device: torch.device) -> None:
        import torch

        if device.type == "mps" and precision is Precision.BF16:
            raise UserError("bf16 autocast is not supported on Apple MPS", where="training.precision")
        self.precision = precision
        self.device = device
        self.dtype = torch_dtype(precision)
        self.scaler = torch.amp.GradScaler(device.type) if precision is Precision.FP16 else None

    @property
    def skips_overflow(self) -> bool:
        """Whether non-finite gradients are routine here: fp16's scaler then skips the step itself."""
        return self.scaler is not None

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        import torch

        if self.precision is Precision.FP32:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def backward(self, loss: torch.Tensor) -> None:
        if self.scaler is None:
            loss.backward()
        else:
            self.scaler.scale(loss).backward()

    def unscale(self, optimizer: torch.optim.Optimizer) -> None:
        """Bring gradients back to their true size, so that clipping compares the real norm."""
        if self.scaler is not None:
            self.scaler.unscale_(optimizer)

    def step(self, optimizer: torch.optim.Optimizer) -> bool:
        """Step the optimizer; False when fp16 gradients overflowed and the scaler skipped the step."""
        if self.scaler is None:
            optimizer.step()
            return True
        scale_before = self.scaler.get_scale()
        self.scaler.step(optimizer)
        self.scaler.update()
        return self.scaler.get_scale() >= scale_before

    def step_unless(self, optimizer: torch.optim.Optimizer, skip: torch.Tensor) -> None:
        """Step the optimizer, which skips its update on the device where `skip` is 1: no host sync.

        The optimizer must take torch's `found_inf` (`_step_supports_amp_scaling`, as fused AdamW, Adam
        and SGD do): GradScaler hands it over the same way. Gradients are already unscaled
        (`unscale`), so no scale goes with it; fp16's scale then grows or shrinks by the overflow
        the scaler found while unscaling.
        """
        optimizer.found_inf = skip  # type: ignore[attr-defined]
        try:
            optimizer.step()
        finally:
            del optimizer.found_inf  # type: ignore[attr-defined]
        if self.scaler is not None:
            self.scaler.update()

    def state_dict(self) -> dict[str, Any]:
        return self.scaler.state_dict() if self.scaler is not None else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.scaler is not None and state:
            self.scaler.load_state_dict(state)
