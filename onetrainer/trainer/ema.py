"""Exponential moving average of the trained weights, for smoother previews and saved models.

The average covers exactly the parameters the optimizer trains (LoRA factors, embedding vectors or
the whole denoiser), in the order of the optimizer's groups, so a backup can store it as a plain list
of tensors. It may live on the CPU to save accelerator memory; it is then updated from a copy.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch


class ModelEma:
    """Shadow copies of `parameters`, pulled toward them by `1 - decay` every `update_every` steps."""

    def __init__(
        self,
        parameters: list[torch.nn.Parameter],
        *,
        decay: float,
        update_every: int = 1,
        device: torch.device | None = None,
    ) -> None:
        import torch

        self.parameters = parameters
        self.decay = decay
        self.update_every = update_every
        self.device = device
        with torch.no_grad():
            self.shadow = [param.detach().to(device=device or param.device, copy=True) for param in parameters]
        self.updates = 0

    def update(self, step: int) -> bool:
        """Fold the current weights into the average after optimizer step `step` (1-based) if due."""
        import torch

        if step % self.update_every != 0:
            return False
        with torch.no_grad():
            current = [
                param.detach().to(shadow.device, shadow.dtype)
                for param, shadow in zip(self.parameters, self.shadow, strict=True)
            ]
            torch._foreach_lerp_(self.shadow, current, 1.0 - self.decay)
        self.updates += 1
        return True

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
