"""The shared half of every family's conditioner: placement, cache identity, gradients, token counts.

A family says how captions become its conditioning tensors (`Encode`: CLIP hidden states, pooled
outputs, T5 states, ...); `TextConditioner` does the rest the same way for all: it moves the text
encoders to the device for a caching pass and back, names everything that changes its output in
`identity()` (weights, dtypes, settings, tokenizer sizes, fixed embeddings) so a cache entry is never
reused for another model or setting, encodes without gradients for the cache and with them when the
text encoders or embeddings train. It also says what of the output each text encoder computes alone
(`sources`: whole keys, or channels of a key where encoders' states are joined along the width), so
the setup can drop one encoder's conditioning by zeroing it, as OneTrainer does.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from onetrainer.model.contracts import Share, Sources
from onetrainer.model_setup.encoders import fingerprint, frozen_encoding, row_by_row_on_cpu
from onetrainer.model_setup.placement import place

if TYPE_CHECKING:
    import torch

    from onetrainer.model.diffusion import DiffusionModel

Encode = Callable[["DiffusionModel", list[str]], dict[str, "torch.Tensor"]]
"""`encode(model, captions)` -> the family's conditioning tensors, each with leading dimension B."""


class TextConditioner:
    def __init__(
        self,
        model: DiffusionModel,
        device: torch.device,
        encode: Encode,
        *,
        output_keys: tuple[str, ...],
        settings: str = "",
        token_limit_encoder: str | None = None,
        sources: Sources | None = None,
    ) -> None:
        self.model = model
        self.device = device
        self._encode = encode
        self.output_keys = output_keys
        self.settings = settings
        self.encoders = model.text_encoder_names()
        if sources is None and len(self.encoders) == 1:
            sources = {self.encoders[0]: output_keys}
        if sources is None or set(sources) != set(self.encoders):
            raise ValueError(f"the conditioner must say what each of {self.encoders} computes alone")
        self.sources: Mapping[str, tuple[Share, ...]] = {
            name: tuple(share if isinstance(share, Share) else Share(share) for share in shares)
            for name, shares in sources.items()
        }
        self.token_limit_encoder = token_limit_encoder or self.encoders[0]
        self._weights: str | None = None

    def identity(self) -> str:
        if self._weights is None:
            parts = []
            for name in self.encoders:
                module = self.model.components[name]
                dtype = str(next(module.parameters()).dtype).removeprefix("torch.")
                parts.append(f"{name}={fingerprint(list(module.state_dict().items()))}/{dtype}")
            self._weights = ",".join(parts)
        tokens = ",".join(str(len(self.model.tokenizer_for(name))) for name in self.encoders)
        fixed = [
            (f"{e.placeholder}/{encoder}", param)
            for e in self.model.adapters.embeddings
            for encoder, param in e.parameters.items()
        ]
        embeddings = f":emb{fingerprint(fixed)}" if fixed else ""
        return f"text:{self._weights}:{self.settings}:tok{tokens}{embeddings}"

    def load(self) -> None:
        for name in self.encoders:
            place(self.model.components[name], self.device)
            self.model.components[name].eval()

    def unload(self) -> None:
        import torch

        for name in self.encoders:
            place(self.model.components[name], "cpu")
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def encode(self, captions: list[str]) -> dict[str, torch.Tensor]:
        """For the cache: `encode_on_device`'s outputs in CPU memory."""
        return {key: value.cpu() for key, value in self.encode_on_device(captions).items()}

    def encode_on_device(self, captions: list[str]) -> dict[str, torch.Tensor]:
        """What the cache holds, left on the device (for an uncached step): float32, from `frozen_encoding`;
        row by row on the CPU (`row_by_row_on_cpu`)."""
        captions = list(captions)

        def encode(rows: slice) -> dict[str, torch.Tensor]:
            with frozen_encoding(self.device):
                return self._encode(self.model, captions[rows])

        outputs = row_by_row_on_cpu(self.device, len(captions), encode)
        return {key: value.float() for key, value in outputs.items()}

    def encode_for_training(self, captions: list[str]) -> dict[str, torch.Tensor]:
        """Inside a training step, where gradients reach trained text encoders and embeddings."""
        return self._encode(self.model, list(captions))

    def caption_token_counts(self, captions: list[str]) -> tuple[list[int], int]:
        from onetrainer.model.clip_text import caption_token_counts

        tokenizer = self.model.tokenizer_for(self.token_limit_encoder)
        return caption_token_counts(tokenizer, captions, self.model.adapters.embeddings)
