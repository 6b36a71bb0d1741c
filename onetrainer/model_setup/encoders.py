"""A family's VAE and CLIP text encoder behind the data loader's encoder interface.

The data loader caches what these return, keyed by `identity()`. The identity therefore names
everything that changes the output: a fingerprint of the weights (so another base model never
reuses a stale cache, even from the same path), the dtype, and for text the clip skip, the
tokenizer size and any fixed embeddings. `load()` / `unload()` move the component to the
training device and back, so caching can free accelerator memory afterwards.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch
    from transformers import CLIPTokenizer

    from onetrainer.model.adapters.embedding import EmbeddingAdapter

_SAMPLE_STRIDE = 997
"""Every 997th value of each tensor enters the fingerprint: cheap, yet any real change shows."""


def fingerprint(tensors: Sequence[tuple[str, torch.Tensor]]) -> str:
    """A short hash of names, shapes, dtypes and a strided sample of the values."""
    import torch

    digest = hashlib.sha256()
    for name, tensor in tensors:
        sample = tensor.detach().flatten()[::_SAMPLE_STRIDE].to("cpu", torch.float32)
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
        digest.update(sample.numpy().tobytes())
    return digest.hexdigest()[:16]


def place(module: torch.nn.Module, device: torch.device | str, dtype: torch.dtype | None = None) -> None:
    """Move a component, skipping diffusers' `to()` override, which warns on every dtype argument."""
    import torch

    torch.nn.Module.to(module, device=device, dtype=dtype)


class _Placed:
    """A frozen component that is moved to the training device on `load()` and back on `unload()`."""

    def __init__(self, module: torch.nn.Module, device: torch.device, dtype: torch.dtype, kind: str) -> None:
        self.module = module
        self.device = device
        self.dtype = dtype
        self.kind = kind
        self._identity: str | None = None

    def _extra_identity(self) -> str:
        return ""

    def identity(self) -> str:
        if self._identity is None:
            weights = fingerprint(list(self.module.state_dict().items()))
            self._identity = f"{self.kind}:{weights}:{str(self.dtype).removeprefix('torch.')}{self._extra_identity()}"
        return self._identity

    def load(self) -> None:
        place(self.module, self.device, self.dtype)
        self.module.eval()

    def unload(self) -> None:
        import torch

        place(self.module, "cpu")
        if self.device.type == "cuda":
            torch.cuda.empty_cache()


class VaeImageEncoder(_Placed):
    """Images in [-1, 1] to scaled latents: (mean of the posterior - shift) * scaling factor.

    The posterior mean, not a sample, so a cached latent is the same on every run.
    """

    def __init__(self, vae: torch.nn.Module, device: torch.device, dtype: torch.dtype) -> None:
        super().__init__(vae, device, dtype, "vae")

    def encode_tensor(self, images: torch.Tensor) -> torch.Tensor:
        import torch

        config = self.module.config
        parameter = next(self.module.parameters())
        with torch.no_grad():
            latents = self.module.encode(images.to(parameter.device, parameter.dtype)).latent_dist.mode()
        shift = getattr(config, "shift_factor", None) or 0.0
        return ((latents.float() - shift) * config.scaling_factor).float()

    def encode(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"latents": self.encode_tensor(images).cpu()}


class ClipTextEncoder(_Placed):
    """Captions to [B, 77, width] hidden states, as `onetrainer.model.clip_text` computes them."""

    def __init__(
        self,
        text_encoder: torch.nn.Module,
        tokenizer: CLIPTokenizer,
        device: torch.device,
        dtype: torch.dtype,
        *,
        clip_skip: int,
        embeddings: Callable[[], list[EmbeddingAdapter]],
    ) -> None:
        super().__init__(text_encoder, device, dtype, "clip")
        self.tokenizer = tokenizer
        self.clip_skip = clip_skip
        self.embeddings = embeddings

    def _extra_identity(self) -> str:
        vectors = [(e.placeholder, e.parameter) for e in self.embeddings()]
        extra = f":emb{fingerprint(vectors)}" if vectors else ""
        return f":skip{self.clip_skip}:tok{len(self.tokenizer)}{extra}"

    def encode(self, captions: list[str]) -> dict[str, torch.Tensor]:
        import torch

        from onetrainer.model.clip_text import encode_tokens, tokenize

        ids = tokenize(self.tokenizer, list(captions), self.embeddings())
        with torch.no_grad():
            hidden = encode_tokens(self.module, ids, self.clip_skip)
        return {"text_hidden": hidden.float().cpu()}
