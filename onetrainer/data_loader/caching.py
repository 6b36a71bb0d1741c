"""The caching pass: make sure every entry the plan can ask for is on disk, encoding only what is not.

Keys are computed first, from file hashes (memoised by stat) and settings, without decoding. Only
if something is missing is the encoder loaded; missing images are grouped by bucket and encoded
`encode_batch_size` at a time (one resolution per call), while the worker pool decodes and augments
the next group; the encoder is unloaded right after. A killed pass loses nothing that was written:
entries are atomic, and the next pass finds them by key.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from onetrainer.data_loader.cache import CacheStore, image_key, text_key
from onetrainer.data_loader.encoders import RESERVED_BATCH_KEYS, ImageEncoder, TextEncoder
from onetrainer.data_loader.events import LoaderEvent, ProgressCallback
from onetrainer.data_loader.files import UnreadableImage
from onetrainer.data_loader.memo import FileMemo, content_hash
from onetrainer.data_loader.pipeline import SamplePipeline
from onetrainer.data_loader.plan import DataPlan, Draw
from onetrainer.data_loader.pool import WorkerPool
from onetrainer.data_loader.scan import Skipped
from onetrainer.util.config.data import ConceptType
from onetrainer.util.errors import RuntimeFailure

if TYPE_CHECKING:
    import torch

MASK_ENTRY = "__mask__"
"""The cropped, augmented mask stored beside the latents (only when it is not all ones)."""

_T = TypeVar("_T")


@dataclass
class CacheStats:
    images_found: int = 0
    images_encoded: int = 0
    image_calls: int = 0
    texts_found: int = 0
    texts_encoded: int = 0
    text_calls: int = 0
    pruned: int = 0
    failed: list[Skipped] = field(default_factory=list)


@dataclass
class CacheIndex:
    """The image-entry key of every (sample id, slot) the plan can ask for."""

    image: dict[tuple[str, int], str] = field(default_factory=dict)


def _chunks(items: Sequence[_T], size: int) -> list[list[_T]]:
    return [list(items[start : start + size]) for start in range(0, len(items), size)]


def image_slots(plan: DataPlan) -> Iterator[Draw]:
    """One draw per (sample, image variation) the plan can use; validation samples use slot 0 only."""
    for index, sample in enumerate(plan.samples):
        concept = plan.concepts[sample.concept]
        slots = 1 if concept.type is ConceptType.VALIDATION else concept.image_variations
        for slot in range(slots):
            yield Draw(index, slot, slot, plan.bucket_of(index, slot))


def text_slots(plan: DataPlan) -> Iterator[Draw]:
    for index, sample in enumerate(plan.samples):
        concept = plan.concepts[sample.concept]
        slots = 1 if concept.type is ConceptType.VALIDATION else concept.text_variations
        for slot in range(slots):
            yield Draw(index, slot, 0, plan.bucket_of(index, 0))


def _check_outputs(outputs: dict[str, torch.Tensor], count: int, encoder: object) -> None:
    for name, tensor in outputs.items():
        if name.startswith("__") or name in RESERVED_BATCH_KEYS:
            raise RuntimeFailure(f"{type(encoder).__name__} returned '{name}', a name the data loader reserves")
        if tensor.shape[0] != count:
            raise RuntimeFailure(
                f"{type(encoder).__name__} returned '{name}' with leading dimension {tensor.shape[0]}, expected {count}"
            )


class CacheFiller:
    def __init__(
        self,
        *,
        plan: DataPlan,
        pipeline: SamplePipeline,
        store: CacheStore,
        memo: FileMemo,
        pool: WorkerPool,
        depth: int,
        encode_batch_size: int,
        progress: ProgressCallback,
    ) -> None:
        self.plan = plan
        self.pipeline = pipeline
        self.store = store
        self.memo = memo
        self.pool = pool
        self.depth = depth
        self.batch = encode_batch_size
        self.progress = progress

    def hashes(self) -> dict[str, str]:
        """Content hash of every image and mask file, keyed by resolved path."""
        files = sorted({p for s in self.plan.samples for p in (s.path, s.mask_path) if p is not None})
        result: dict[str, str] = {}
        for done, (path, digest) in enumerate(
            self.pool.map_ordered(lambda p: (p, content_hash(p, self.memo)), files, self.depth), 1
        ):
            result[str(path.resolve())] = digest
            self.progress(LoaderEvent("progress", "hash", done, len(files)))
        return result

    def _image_key(self, draw: Draw, encoder: str, hashes: dict[str, str]) -> str:
        sample = self.plan.samples[draw.sample]
        concept = self.plan.concepts[sample.concept]
        return image_key(
            content=hashes[str(sample.path.resolve())],
            mask_content=hashes[str(sample.mask_path.resolve())] if sample.mask_path else None,
            encoder=encoder,
            sample_id=sample.id,
            bucket=draw.bucket,
            variation=draw.slot,
            seeds=(self.plan.seed, concept.seed),
            settings=self.pipeline.image_settings(concept),
        )

    def _materialise(self, chunk: list[tuple[Draw, str]]) -> list[tuple[Draw, str, dict[str, Any] | Skipped]]:
        results: list[tuple[Draw, str, dict[str, Any] | Skipped]] = []
        for draw, key in chunk:
            try:
                results.append((draw, key, self.pipeline.image(draw, ("pixels", "mask"))))
            except UnreadableImage as exc:
                # the sample's path, not the mask's: the sample is what is dropped from the plan
                image = self.plan.samples[draw.sample].path
                reason = exc.reason if exc.path == image else f"{exc.reason} ({exc.path})"
                results.append((draw, key, Skipped(image, reason)))
        return results

    def images(self, encoder: ImageEncoder, hashes: dict[str, str], stats: CacheStats) -> CacheIndex:
        import torch

        index = CacheIndex()
        identity = encoder.identity()
        missing: dict[tuple[int, int], list[tuple[Draw, str]]] = defaultdict(list)
        for draw in image_slots(self.plan):
            sample = self.plan.samples[draw.sample]
            key = index.image[(sample.id, draw.slot)] = self._image_key(draw, identity, hashes)
            if self.store.has("image", key):
                self.store.remember("image", key, source=sample.path, content=hashes[str(sample.path.resolve())])
                stats.images_found += 1
            else:
                missing[draw.bucket].append((draw, key))
        chunks = [chunk for bucket in sorted(missing) for chunk in _chunks(missing[bucket], self.batch)]
        total = sum(len(chunk) for chunk in chunks)
        if not chunks:
            return index
        encoder.load()
        try:
            done = 0
            for results in self.pool.map_ordered(self._materialise, chunks, self.depth):
                good = [(draw, key, item) for draw, key, item in results if isinstance(item, dict)]
                stats.failed += [item for _, _, item in results if isinstance(item, Skipped)]
                if good:
                    with torch.no_grad():
                        outputs = encoder.encode(torch.stack([item["pixels"] for _, _, item in good]))
                    _check_outputs(outputs, len(good), encoder)
                    stats.image_calls += 1
                    for row, (draw, key, item) in enumerate(good):
                        tensors = {name: value[row].detach().cpu().clone() for name, value in outputs.items()}
                        if not bool((item["mask"] == 255).all()):
                            tensors[MASK_ENTRY] = item["mask"]
                        sample = self.plan.samples[draw.sample]
                        content = hashes[str(sample.path.resolve())]
                        self.store.write("image", key, tensors, source=sample.path, content=content)
                    stats.images_encoded += len(good)
                done += len(results)
                self.progress(LoaderEvent("progress", "cache-images", done, total))
        finally:
            encoder.unload()
            self.store.save_manifest()
        return index

    def texts(self, encoder: TextEncoder, stats: CacheStats, *, skip: Callable[[str], bool]) -> None:
        import torch

        identity = encoder.identity()
        missing: dict[str, tuple[str, Draw]] = {}
        empty: set[str] = set()
        for draw in text_slots(self.plan):
            sample = self.plan.samples[draw.sample]
            if skip(sample.id):
                continue
            for caption in self.pipeline.cached_captions(draw):
                key = text_key(encoder=identity, caption=caption)
                if key in missing or key in empty:
                    continue
                if not caption:
                    empty.add(key)  # (the empty caption many images share: counted once)
                if self.store.has("text", key):
                    self.store.remember("text", key, source=sample.path, content="")
                    stats.texts_found += 1
                else:
                    missing[key] = (caption, draw)
        if not missing:
            return
        chunks = _chunks(list(missing.items()), self.batch)
        encoder.load()
        try:
            done = 0
            for chunk in chunks:
                with torch.no_grad():
                    outputs = encoder.encode([caption for _, (caption, _) in chunk])
                _check_outputs(outputs, len(chunk), encoder)
                stats.text_calls += 1
                for row, (key, (_, draw)) in enumerate(chunk):
                    tensors = {name: value[row].detach().cpu().clone() for name, value in outputs.items()}
                    self.store.write("text", key, tensors, source=self.plan.samples[draw.sample].path, content="")
                stats.texts_encoded += len(chunk)
                done += len(chunk)
                self.progress(LoaderEvent("progress", "cache-text", done, len(missing)))
        finally:
            encoder.unload()
            self.store.save_manifest()
