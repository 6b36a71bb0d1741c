"""Turning one rank's share of a planned batch into the batch dict the training step consumes.

This runs in worker threads. With a cache it reads entries and recomputes only the cheap parts (the
crop geometry from header sizes, the caption); without one it runs the image graph. Either way the
batch has one resolution, and its contents depend only on the plan and the seeds.

Batch keys: `latents` (or the image encoder's other outputs) or `pixels` [B,3,H,W] in [-1, 1];
`mask` float [B,1,H,W] at pixel resolution in [0, 1] (ones where there is no mask); `captions`;
the text encoder's outputs when one is given; `loss_weight` float [B]; `is_prior` bool [B];
`sample_ids`; `original_size`, `crop_top_left`, `target_size` long [B,2] as (h, w).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from onetrainer.data_loader.cache import CacheStore, text_key
from onetrainer.data_loader.caching import MASK_ENTRY, CacheIndex
from onetrainer.data_loader.files import UnreadableImage
from onetrainer.data_loader.pipeline import SamplePipeline
from onetrainer.data_loader.plan import Draw
from onetrainer.util.config.data import ConceptType
from onetrainer.util.errors import RuntimeFailure

if TYPE_CHECKING:
    import torch


class BatchBuilder:
    def __init__(
        self,
        pipeline: SamplePipeline,
        *,
        store: CacheStore | None = None,
        index: CacheIndex | None = None,
        text_identity: str | None = None,
    ) -> None:
        self.pipeline = pipeline
        self.plan = pipeline.plan
        self.store = store
        self.index = index
        self.text_identity = text_identity
        self._text_keys: dict[str, str] = {}

    def _image_part(self, draw: Draw) -> dict[str, Any]:
        import torch

        if self.pipeline.image_cached and self.store is not None and self.index is not None:
            sample = self.plan.samples[draw.sample]
            entry = self.store.read("image", self.index.image[(sample.id, draw.slot)])
            height, width = draw.bucket
            mask = entry.pop(MASK_ENTRY, None)
            entry["mask"] = mask if mask is not None else torch.full((1, height, width), 255, dtype=torch.uint8)
            entry.update(self.pipeline.geometry(draw))
            return entry
        try:
            return self.pipeline.image(draw)
        except UnreadableImage as exc:
            raise RuntimeFailure(
                f"cannot decode {exc.path}: {exc.reason}",
                hint="Remove or replace the file; with data.verify_images on, the next run skips it up front.",
            ) from exc

    def _item(self, draw: Draw) -> dict[str, Any]:
        sample = self.plan.samples[draw.sample]
        concept = self.plan.concepts[sample.concept]
        item = self._image_part(draw)
        item["caption"] = self.pipeline.caption(draw)
        if self.pipeline.text_cached and self.store is not None and self.text_identity is not None:
            key = self._text_keys.get(item["caption"])
            if key is None:
                key = self._text_keys[item["caption"]] = text_key(encoder=self.text_identity, caption=item["caption"])
            item.update(self.store.read("text", key))
        item["sample_id"] = sample.id
        item["loss_weight"] = concept.loss_weight
        item["is_prior"] = concept.type is ConceptType.PRIOR
        return item

    def build(self, draws: tuple[Draw, ...]) -> dict[str, Any]:
        return collate([self._item(draw) for draw in draws], draws[0].bucket)


_PER_SAMPLE = {"caption", "sample_id", "loss_weight", "is_prior", "original_size", "crop_top_left", "mask"}


def collate(items: list[dict[str, Any]], bucket: tuple[int, int]) -> dict[str, Any]:
    import torch

    batch: dict[str, Any] = {}
    for name in items[0]:
        if name not in _PER_SAMPLE:
            batch[name] = torch.stack([item[name] for item in items])
    batch["mask"] = torch.stack([item["mask"] for item in items]).float().div_(255.0)
    batch["captions"] = [item["caption"] for item in items]
    batch["sample_ids"] = [item["sample_id"] for item in items]
    batch["loss_weight"] = torch.tensor([item["loss_weight"] for item in items], dtype=torch.float32)
    batch["is_prior"] = torch.tensor([item["is_prior"] for item in items], dtype=torch.bool)
    batch["original_size"] = _pairs([item["original_size"] for item in items])
    batch["crop_top_left"] = _pairs([item["crop_top_left"] for item in items])
    batch["target_size"] = _pairs([bucket] * len(items))
    return batch


def _pairs(values: list[tuple[int, int]]) -> torch.Tensor:
    import torch

    return torch.tensor([list(value) for value in values], dtype=torch.long)


def pin_batch(batch: dict[str, Any]) -> dict[str, Any]:
    """The batch with its tensors in page-locked memory, which a GPU copies from without blocking the host."""
    import torch

    return {key: value.pin_memory() if isinstance(value, torch.Tensor) else value for key, value in batch.items()}
