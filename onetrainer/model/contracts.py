"""What the trainer and the commands ask of a family: the typed contracts of its registered modules.

A family registers a loader, a setup, a sampler and a saver (see `util.registry`); the trainer and
the commands see them only through these protocols, and mypy checks both sides in CI. Most families
implement little of this themselves: the shared `DiffusionSetup` is a `TrainingSetup` once it is given
the family's `FamilyHooks`, and the shared loader, saver and sampler pieces do the rest.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import torch
    from PIL import Image

    from onetrainer.data_loader.encoders import ImageEncoder
    from onetrainer.model.diffusion import DiffusionModel
    from onetrainer.model.quantised import QuantisedStorage
    from onetrainer.util.config.model import ModelConfig
    from onetrainer.util.config.output import SaveDtype, SaveFormat
    from onetrainer.util.config.schema import TrainConfig
    from onetrainer.util.enums import TrainingMethod

Batch = dict[str, Any]
Progress = Callable[[int, int], None]
"""progress(done_steps, total_steps) over all images of one `sample` call."""


@dataclass(frozen=True)
class Share:
    """What one text encoder alone computes of a conditioning tensor: the key, and the channels (the last
    dimension, `[start, stop)`) it fills, or the whole tensor."""

    key: str
    channels: tuple[int, int] | None = None


Sources = Mapping[str, tuple["str | Share", ...]]
"""Text encoder -> its shares of a conditioner's output, as a family states them; a plain key is the whole tensor."""


class ModelLoader(Protocol):
    def load(
        self,
        model_config: ModelConfig,
        *,
        device: str = "cpu",
        quantise: Mapping[str, QuantisedStorage] | None = None,
    ) -> DiffusionModel:
        """The base model `model_config` names (folder, hub id, single file or tiny model), on `device`; the
        components named in `quantise` with their linear layers in that storage, quantised while reading
        where the source allows it (see `model.quantised`)."""
        ...


LoaderFactory = Callable[[], ModelLoader]
"""What a family registers as its loader: called with no arguments."""


class Conditioner(Protocol):
    """Captions to the tensors a family's denoiser is conditioned on; also the data loader's text encoder.

    The data loader caches what `encode` returns under `identity()`; an uncached step takes the same from
    `encode_on_device`, without the copy to CPU memory; the setup calls `encode_for_training` when the text
    encoders (or embeddings) train, so gradients flow. All three return the same keys.
    """

    output_keys: tuple[str, ...]
    sources: Mapping[str, tuple[Share, ...]]
    """Text encoder -> what of the output it alone computes (zeroed where its conditioning is dropped), for
    every text encoder."""

    def identity(self) -> str: ...

    def load(self) -> None: ...

    def unload(self) -> None: ...

    def encode(self, captions: list[str]) -> dict[str, torch.Tensor]: ...

    def encode_on_device(self, captions: list[str]) -> dict[str, torch.Tensor]: ...

    def encode_for_training(self, captions: list[str]) -> dict[str, torch.Tensor]: ...

    def caption_token_counts(self, captions: list[str]) -> tuple[list[int], int]:
        """(tokens in each caption, the most the text encoders read): the trainer warns about cut captions."""
        ...


class FamilyHooks(Protocol):
    """The few things a family does differently from the shared diffusion setup (kohya's get_text_cond /
    call_unet split): how captions condition the denoiser, and how the denoiser is called."""

    def conditioner(self, model: DiffusionModel, *, layer_skip: Mapping[str, int], device: torch.device) -> Conditioner:
        """The family's conditioner; `layer_skip` counts extra text-encoder layers skipped per encoder."""
        ...

    def denoise(
        self,
        model: DiffusionModel,
        noisy: torch.Tensor,
        timesteps: torch.Tensor,
        conditioning: Mapping[str, torch.Tensor],
        batch: Batch,
    ) -> torch.Tensor:
        """The denoiser's prediction for `noisy` latents [B, C, h, w], in the same layout."""
        ...


class TrainingSetup(Protocol):
    """Everything training needs from a family without training: trainables, encoders, predict and loss."""

    def prepare(self, device: torch.device | str, dtype: torch.dtype) -> None: ...

    def parameter_groups(self) -> list[dict[str, Any]]: ...

    def trainable_state_dict(self) -> dict[str, torch.Tensor]: ...

    def load_trainable_state_dict(self, state: dict[str, torch.Tensor]) -> None: ...

    def image_encoder(self) -> ImageEncoder: ...

    def text_encoder(self) -> Conditioner | None:
        """The conditioner for caching, or None while what it computes still trains."""
        ...

    def caption_token_counts(self, captions: list[str]) -> tuple[list[int], int]: ...

    def interop_warnings(self) -> list[str]:
        """What the trained result will lose in other tools (said once, before training starts)."""
        ...

    def predict(self, batch: Batch, generator: torch.Generator) -> dict[str, torch.Tensor]: ...

    def loss(self, prediction: dict[str, torch.Tensor], batch: Batch) -> torch.Tensor: ...

    def on_step(self, step: int, epoch: int) -> None: ...

    def train(self) -> None: ...

    def eval(self) -> None: ...


SetupFactory = Callable[["DiffusionModel", "TrainConfig"], TrainingSetup]
"""What a family registers as its setup."""


class Sampler(Protocol):
    def default_size(self) -> int: ...

    def sample(
        self,
        prompt: str,
        negative_prompt: str = "",
        *,
        steps: int = 20,
        cfg: float = 7.0,
        seed: int = 42,
        width: int | None = None,
        height: int | None = None,
        scheduler: str | None = None,
        count: int = 1,
        progress: Progress | None = None,
    ) -> list[Image.Image]: ...


class SamplerFactory(Protocol):
    """What a family registers as its sampler: `factory(model, layer_skip={encoder: layers skipped})`."""

    def __call__(self, model: DiffusionModel, /, *, layer_skip: Mapping[str, int] | None = None) -> Sampler: ...


class Saver(Protocol):
    def save(
        self,
        model: DiffusionModel,
        output: str | Path,
        *,
        method: TrainingMethod,
        format: SaveFormat | str = ...,
        dtype: SaveDtype | str | None = ...,
        config: TrainConfig | None = None,
        overwrite: bool = False,
    ) -> list[Path]:
        """Write what `method` trained to `output` in `format`; returns every path written."""
        ...


SaverFactory = Callable[[], Saver]
"""What a family registers as its saver: called with no arguments."""
