"""A family's VAE behind the data loader's image-encoder interface, and the weights fingerprint.

The data loader caches what encoders return, keyed by `identity()`. The identity therefore names
everything that changes the output: a fingerprint of the weights (so another base model never
reuses a stale cache, even from the same path) and the dtype. `load()` / `unload()` move the
component to the training device and back, so caching can free accelerator memory afterwards.
(The text side is each family's conditioner: `conditioning.TextConditioner`.)
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from onetrainer.model_setup.placement import place
from onetrainer.util.errors import UserError

if TYPE_CHECKING:
    import torch
    from diffusers import AutoencoderKL

_SAMPLE_STRIDE = 997
"""Every 997th value of each tensor enters the fingerprint: cheap, yet any real change shows."""


def fingerprint(tensors: Sequence[tuple[str, torch.Tensor]]) -> str:
    """A short hash of names, shapes, dtypes and a strided sample of the values."""
    import torch

    from onetrainer.model.quantised import plain_tensors

    digest = hashlib.sha256()
    for name, tensor in tensors:
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
        for part in plain_tensors(tensor):  # a quantised weight: its values and scales
            sample = part.detach().flatten()[::_SAMPLE_STRIDE].to("cpu", torch.float32)
            digest.update(sample.numpy().tobytes())
    return digest.hexdigest()[:16]


def row_by_row_on_cpu(
    device: torch.device, count: int, encode: Callable[[slice], dict[str, torch.Tensor]]
) -> dict[str, torch.Tensor]:
    """`encode(rows)` of all `count` rows, one row per call on the CPU (batched elsewhere).

    The CPU's kernels are not batch-invariant: an image encoded beside others differs from the same image
    alone in the last bits. The cache is filled with what is missing, so which entries share a call would
    depend on what an earlier (interrupted, or differently batched) fill left, and so would the weights of
    a run with the same config and seed.
    """
    import torch

    if device.type != "cpu" or count <= 1:
        return encode(slice(None))
    parts = [encode(slice(row, row + 1)) for row in range(count)]
    return {key: torch.cat([part[key] for part in parts]) for key in parts[0]}


@contextlib.contextmanager
def frozen_encoding(device: torch.device) -> Iterator[None]:
    """A frozen encoder's pass as the cache runs it: no gradients, and not under a training step's autocast,
    which would run it in another dtype than its own (some VAEs and text encoders overflow in fp16)."""
    import torch

    with torch.no_grad(), torch.autocast(device.type, enabled=False):
        yield


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

    The posterior mean, not a sample, so a cached latent is the same on every run. Latents that are not
    finite are refused before anything caches them (`NonFiniteLatents`). Inside a training step
    (`encode_on_device`, `data.cache: false`) they are not read on the host, which would wait for the
    GPU at every step: a non-finite latent makes that step's loss non-finite, which stops the run before
    its update, with the fp16 hints of `trainer.divergence`.
    """

    module: AutoencoderKL
    """The family's diffusers VAE: an `AutoencoderKL` or one with its `encode` and config fields."""

    def __init__(self, vae: AutoencoderKL, device: torch.device, dtype: torch.dtype, *, part: str = "vae") -> None:
        super().__init__(vae, device, dtype, "vae")
        self.part = part

    def _extra_identity(self) -> str:
        """The factors the latents are scaled and shifted by: the same weights under another config (a
        `model.vae` override) encode to other latents."""
        config = self.module.config
        shift = getattr(config, "shift_factor", None) or 0.0
        return f":scale={float(config.scaling_factor)!r}:shift={float(shift)!r}"

    def encode_tensor(self, images: torch.Tensor) -> torch.Tensor:
        """float32 latents on the encoder's device, checked to be finite."""
        import torch

        scaled = self.encode_on_device(images)
        bad = int((~torch.isfinite(scaled.flatten(1))).any(dim=1).sum())
        if bad:
            dtype = next(self.module.parameters()).dtype
            raise non_finite_latents(bad, tuple(images.shape), dtype, self.part, self.module.config)
        return scaled

    def encode_on_device(self, images: torch.Tensor) -> torch.Tensor:
        """float32 latents on the encoder's device, unchecked: nothing here waits for the device. Row by row on
        the CPU (`row_by_row_on_cpu`), so an uncached batch encodes as the cache does."""
        config = self.module.config
        parameter = next(self.module.parameters())
        pixels = images.to(parameter.device, non_blocking=True).to(parameter.dtype)

        def encode(rows: slice) -> dict[str, torch.Tensor]:
            with frozen_encoding(parameter.device):
                return {"latents": self.module.encode(pixels[rows]).latent_dist.mode()}

        latents = row_by_row_on_cpu(parameter.device, len(pixels), encode)["latents"]
        shift = getattr(config, "shift_factor", None) or 0.0
        return ((latents.float() - shift) * config.scaling_factor).float()

    def encode(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"latents": self.encode_tensor(images).cpu()}


class NonFiniteLatents(UserError):
    """The VAE encoded images to NaN or infinite latents, which would poison training and the cache."""

    title = "VAE produced NaN latents"


def non_finite_latents(
    bad: int, shape: tuple[int, ...], dtype: torch.dtype, part: str, config: Any
) -> NonFiniteLatents:
    """The error for `bad` of a batch of images (`shape` [B, C, H, W]) with non-finite latents, naming the
    usual cause for this VAE's dtype."""
    import torch

    stored = str(dtype).removeprefix("torch.")
    message = f"the VAE ({stored}) encoded {bad} of {shape[0]} images ({shape[-1]}x{shape[-2]} px) to NaN/inf latents"
    if dtype == torch.float16:
        said = ", as this one's config.json says (force_upcast: true)" if getattr(config, "force_upcast", False) else ""
        hint = (
            f"Some VAEs overflow in fp16{said}. Keep it in fp32 or bf16 (parts.{part}.weight_dtype=fp32 or bf16), "
            "or use a VAE fine-tuned to run in fp16 (model.vae=<folder, file or hub id>)."
        )
    else:
        hint = "The VAE's weights may be damaged (NaN in the file), or model.vae names a VAE of another model."
    return NonFiniteLatents(message, where=f"parts.{part}", hint=hint)
