"""The named, trainable tensors of a run, grouped by model part.

One record serves three consumers that must agree: the optimizer (parameter groups by part name),
backups (a flat state dict with stable names) and resume (loading that state dict back, refusing
one that belongs to another run setup instead of silently training from scratch).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from onetrainer.util.errors import UserError

if TYPE_CHECKING:
    import torch


@dataclass
class Trainables:
    groups: dict[str, dict[str, torch.nn.Parameter]] = field(default_factory=dict)
    """Part name (a component's name, or "embeddings") -> parameter name -> parameter."""

    def add(self, part: str, named: dict[str, torch.nn.Parameter]) -> None:
        if named:
            self.groups.setdefault(part, {}).update(named)

    def parameters(self, part: str) -> list[torch.nn.Parameter]:
        return list(self.groups.get(part, {}).values())

    def parameter_lists(self) -> dict[str, list[torch.nn.Parameter]]:
        """Part name -> its parameters, in the order they were added (the optimizer groups' order)."""
        return {part: list(named.values()) for part, named in self.groups.items()}

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {
            f"{part}.{name}": param.detach() for part, named in self.groups.items() for name, param in named.items()
        }

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        import torch

        own = {f"{part}.{name}": param for part, named in self.groups.items() for name, param in named.items()}
        missing = sorted(set(own) - set(state))
        unexpected = sorted(set(state) - set(own))
        if missing or unexpected:
            example = (missing or unexpected)[0]
            raise UserError(
                f"the saved trained weights do not match this run: {len(missing)} missing, "
                f"{len(unexpected)} unexpected (e.g. {example})",
                hint="Resume with the config the backup was made with (method, lora, embedding, parts).",
            )
        with torch.no_grad():
            for key, param in own.items():
                value = state[key]
                if tuple(value.shape) != tuple(param.shape):
                    raise UserError(
                        f"{key} has shape {tuple(value.shape)} in the backup but {tuple(param.shape)} in this run",
                        hint="Resume with the config the backup was made with.",
                    )
                param.copy_(value.to(param.device, param.dtype))

    def count(self) -> int:
        return sum(param.numel() for named in self.groups.values() for param in named.values())
