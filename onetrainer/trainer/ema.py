"""Exponential moving average of the trained weights, for smoother previews and saved models.

The average covers exactly the parameters the optimizer trains (LoRA factors, embedding vectors or
the whole denoiser), in the order of the optimizer's groups, so a backup can store it as a plain list
of tensors; it is kept in fp32 for weights in bf16 or fp16 (`average_dtype`). It lives beside the
weights (a weight held in CPU memory, an offloaded block's, is averaged there), or in CPU memory to
save accelerator memory: it is then updated from copies, taken without waiting for the GPU, into
pinned memory, a chunk of `CHUNK_BYTES` at a time, with one wait per chunk instead of one per tensor.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

CHUNK_BYTES = 256 * 2**20
"""Pinned memory that copies for an average in CPU memory take at a time (torch's host allocator keeps it)."""


class ModelEma:
    """Shadow copies of `parameters`, pulled toward them by `1 - decay` every `update_every` steps.

    With `warmup`, the update after optimizer step s (from 1) keeps min(decay, s / (9 + s)) of the old average,
    as OneTrainer (by optimizer step, whatever `update_every`) and diffusers' EMAModel (which updates every
    step) do: at decay 0.999 the average would otherwise still hold a third of the untrained weights after
    1,000 updates, and a model saved from it would look barely trained.
    """

    def __init__(
        self,
        parameters: list[torch.nn.Parameter],
        *,
        decay: float,
        update_every: int = 1,
        warmup: bool = True,
        device: torch.device | None = None,
    ) -> None:
        import torch

        self.parameters = parameters
        self.decay = decay
        self.update_every = update_every
        self.warmup = warmup
        with torch.no_grad():
            self.shadow = [
                param.detach().to(device=device or param.device, dtype=average_dtype(param.dtype), copy=True)
                for param in parameters
            ]
        self.updates = 0

    def update(self, step: int) -> bool:
        """Fold the current weights into the average after optimizer step `step` (1-based) if due."""
        import torch

        if step % self.update_every != 0:
            return False
        decay = self.decay_at(step)
        with torch.no_grad():
            for pairs in self._chunks():
                shadows = [shadow for _, shadow in pairs]
                current = [param.detach().to(shadow.device, shadow.dtype, non_blocking=True) for param, shadow in pairs]
                for device in {param.device for param, shadow in pairs if _leaves_gpu(param, shadow)}:
                    torch.cuda.current_stream(device).synchronize()  # the copies to pinned memory have arrived
                torch._foreach_lerp_(shadows, current, 1.0 - decay)
        self.updates += 1
        return True

    def decay_at(self, step: int) -> float:
        """The share of the old average an update after optimizer step `step` (from 1) keeps."""
        return min(self.decay, step / (9 + step)) if self.warmup else self.decay

    def _chunks(self) -> Iterator[list[tuple[torch.nn.Parameter, torch.Tensor]]]:
        """The (weight, shadow) pairs: one chunk where no copy leaves the GPU, else chunks of `CHUNK_BYTES`."""
        pairs = list(zip(self.parameters, self.shadow, strict=True))
        if not any(_leaves_gpu(param, shadow) for param, shadow in pairs):
            yield pairs
            return
        chunk: list[tuple[torch.nn.Parameter, torch.Tensor]] = []
        size = 0
        for param, shadow in pairs:
            if chunk and size + shadow.nbytes > CHUNK_BYTES:
                yield chunk
                chunk, size = [], 0
            chunk.append((param, shadow))
            size += shadow.nbytes
        if chunk:
            yield chunk

    @contextlib.contextmanager
    def applied(self) -> Iterator[None]:
        """Show the averaged weights in the model for the duration of the block (previews, saves)."""
        import torch

        with torch.no_grad():
            trained = [param.detach().clone() for param in self.parameters]
            for param, shadow in zip(self.parameters, self.shadow, strict=True):
                param.copy_(shadow)
        try:
            yield
        finally:
            with torch.no_grad():
                for param, weights in zip(self.parameters, trained, strict=True):
                    param.copy_(weights)

    def state_dict(self) -> dict[str, Any]:
        return {"shadow": [tensor.detach().cpu() for tensor in self.shadow], "updates": self.updates}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        import torch

        shadow = state["shadow"]
        if len(shadow) != len(self.shadow) or any(
            saved.shape != own.shape for saved, own in zip(shadow, self.shadow, strict=True)
        ):
            raise ValueError("the saved moving average does not match the trained parameters")
        with torch.no_grad():
            for own, saved in zip(self.shadow, shadow, strict=True):
                own.copy_(saved)
        self.updates = int(state["updates"])


def average_dtype(dtype: torch.dtype) -> torch.dtype:
    """fp32 for bf16 and fp16 weights: at decay 0.999 each update moves the average by a thousandth of the step,
    which a bf16 average (8 bits of mantissa) would round away; the weights get it rounded when it is applied."""
    import torch

    return torch.float32 if dtype in (torch.bfloat16, torch.float16) else dtype


def _leaves_gpu(param: torch.Tensor, shadow: torch.Tensor) -> bool:
    """Whether a weight's average is in CPU memory while the weight is on the GPU: its copy is waited for."""
    return param.is_cuda and not shadow.is_cuda
