"""The encoder interface each model family implements for the data loader (VAE, text encoders).

The loader never imports a model: it calls `encode` on whatever the family passes in, batched per
bucket, and caches the results under `identity()`. Both encoders are optional, and only fill the
cache. Without an image encoder, or with `data.cache: false`, a batch carries `pixels`; without a text
encoder (a text encoder being trained, or embeddings), or uncached, it carries only `captions`. The
family then encodes them itself inside the training step, on the device (without the round trip
through CPU memory that a cache entry takes, and without waiting for the device).

Contract:

* `identity()` must change whenever outputs would change (model source or content hash, dtype,
  relevant settings such as clip skip); it is part of every cache key. It must be cheap and must
  work before `load()`.
* `load()` / `unload()` bracket a caching pass: the loader calls `load()` only when something is
  missing from the cache and `unload()` right after, so VRAM is free again for training.
* `ImageEncoder.encode(images)`: float32 [B, 3, H, W] in [-1, 1], one resolution per call; returns
  tensors with leading dimension B, e.g. {"latents": [B, 4, H/8, W/8]} already multiplied by the
  VAE scaling factor.
* `TextEncoder.encode(captions)`: returns tensors with leading dimension B, e.g.
  {"text_hidden": [B, 77, 768]} (a family may add others, such as a pooled output).
* Output names must not start with `__` (reserved for the cache's own entries) and must not be
  `mask`, `captions` or any other batch key the loader fills itself.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    import torch

RESERVED_BATCH_KEYS = frozenset(
    {
        "pixels",
        "mask",
        "captions",
        "loss_weight",
        "is_prior",
        "sample_ids",
        "original_size",
        "crop_top_left",
        "target_size",
    }
)


@runtime_checkable
class ImageEncoder(Protocol):
    def identity(self) -> str: ...

    def load(self) -> None: ...

    def unload(self) -> None: ...

    def encode(self, images: torch.Tensor) -> dict[str, torch.Tensor]: ...


@runtime_checkable
class TextEncoder(Protocol):
    def identity(self) -> str: ...

    def load(self) -> None: ...

    def unload(self) -> None: ...

    def encode(self, captions: list[str]) -> dict[str, torch.Tensor]: ...
