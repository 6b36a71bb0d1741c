"""Tiny reference encoders: the encoder interface without a model, for tests, benchmarks and demos.

They are deterministic, fast on a CPU, and count their work, so a test can assert that the cache
encoded exactly the missing entries, in how many calls, and that nothing ran while unloaded.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


class TinyImageEncoder:
    """8x average pooling and a fixed random 1x1 convolution: [B,3,H,W] -> {"latents": [B,4,H/8,W/8]}."""

    def __init__(self, *, seed: int = 0, channels: int = 4, factor: int = 8, scaling: float = 0.18215) -> None:
        self.seed = seed
        self.channels = channels
        self.factor = factor
        self.scaling = scaling
        self.weight: torch.Tensor | None = None
        self.calls = 0
        self.encoded = 0
        self.loads = 0

    def identity(self) -> str:
        return f"tiny-image:v1:seed={self.seed}:c={self.channels}:f={self.factor}:s={self.scaling}:float32"

    def load(self) -> None:
        import torch

        generator = torch.Generator().manual_seed(self.seed)
        self.weight = torch.randn(self.channels, 3, 1, 1, generator=generator)
        self.loads += 1

    def unload(self) -> None:
        self.weight = None

    def encode(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        import torch.nn.functional as F

        if self.weight is None:
            raise RuntimeError("TinyImageEncoder.encode called while not loaded")
        self.calls += 1
        self.encoded += images.shape[0]
        pooled = F.avg_pool2d(images.float(), self.factor)
        return {"latents": F.conv2d(pooled, self.weight) * self.scaling}


class TinyTextEncoder:
    """Byte embeddings of the caption, padded to `length`: list[str] -> {"text_hidden": [B,length,dim]}."""

    def __init__(self, *, seed: int = 0, dim: int = 8, length: int = 77) -> None:
        self.seed = seed
        self.dim = dim
        self.length = length
        self.table: torch.Tensor | None = None
        self.calls = 0
        self.encoded = 0
        self.loads = 0

    def identity(self) -> str:
        return f"tiny-text:v1:seed={self.seed}:dim={self.dim}:len={self.length}:float32"

    def load(self) -> None:
        import torch

        self.table = torch.randn(257, self.dim, generator=torch.Generator().manual_seed(self.seed))
        self.loads += 1

    def unload(self) -> None:
        self.table = None

    def encode(self, captions: list[str]) -> dict[str, torch.Tensor]:
        import torch

        if self.table is None:
            raise RuntimeError("TinyTextEncoder.encode called while not loaded")
        self.calls += 1
        self.encoded += len(captions)
        ids = torch.full((len(captions), self.length), 256, dtype=torch.long)
        for row, caption in enumerate(captions):
            data = list(caption.encode("utf-8")[: self.length])
            ids[row, : len(data)] = torch.tensor(data, dtype=torch.long)
        return {"text_hidden": self.table[ids]}
