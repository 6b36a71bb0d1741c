"""The data loader the trainer uses: scan, plan, cache, then batches with prefetch and resume.

`build_data_loader` scans the concepts (raising the exit-2 errors: missing folders, nothing to
train, skipped files under `strict`), plans the epochs and builds the graphs. `fill_cache()` runs
the caching pass; `batches(epoch)` yields this rank's batches, prepared by the worker pool ahead of
the training step (in page-locked memory with `pin_memory`, for the GPU to copy without blocking the
host); `state_dict()` is (epoch, batches handed out), enough to resume mid-epoch with
exactly the batches an uninterrupted run would have produced.
"""

from __future__ import annotations

from collections.abc import Generator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from onetrainer.data_loader.batches import BatchBuilder, pin_batch
from onetrainer.data_loader.cache import CacheStore
from onetrainer.data_loader.caching import CacheFiller, CacheIndex, CacheStats, text_slots
from onetrainer.data_loader.encoders import ImageEncoder, TextEncoder
from onetrainer.data_loader.events import LoaderEvent, ProgressCallback, ignore_events
from onetrainer.data_loader.memo import FileMemo
from onetrainer.data_loader.pipeline import MASK_AUGMENTATIONS, SamplePipeline, uses_mask_augmentation
from onetrainer.data_loader.plan import DataPlan, Draw
from onetrainer.data_loader.pool import WorkerPool
from onetrainer.data_loader.report import DatasetReport, build_report
from onetrainer.data_loader.scan import ConceptScan, Skipped, scan_concepts
from onetrainer.util.errors import UserError

if TYPE_CHECKING:
    from onetrainer.util.config.schema import TrainConfig

MEMO_FILE = "files.json"
CACHED_WINDOW = 16
"""Batches kept in flight when they are read from the cache: each costs a few MB at most, and a wider
window means fewer, larger refills, each of which briefly competes with the training thread for the
GIL (measured: the mean wait per step halves from a window of 4 to one of 8)."""


def default_cache_dir(config: TrainConfig) -> Path:
    return config.data.cache_dir if config.data.cache_dir is not None else config.workspace / "cache"


def _plan(config: TrainConfig, scans: list[ConceptScan], *, quantisation: int, world_size: int) -> DataPlan:
    samples = [sample for scan in scans if scan.config.enabled for sample in scan.samples]
    return DataPlan(
        samples,
        [scan.config for scan in scans],
        [scan.label for scan in scans],
        resolution=config.data.resolution,
        seed=config.training.seed,
        batch_size=config.training.batch_size,
        world_size=world_size,
        quantisation=quantisation,
        bucketing=config.data.bucketing,
    )


def _raise_if_strict(config: TrainConfig, skipped: list[Skipped]) -> None:
    if config.data.strict and skipped:
        listing = "\n".join(f"  - {item.path}: {item.reason}" for item in skipped)
        raise UserError(
            f"{len(skipped)} image(s) cannot be used (data.strict is on):\n{listing}",
            hint="Fix or remove these files, or set data.strict=false to skip them with a warning.",
        )


def dataset_report(
    config: TrainConfig,
    *,
    quantisation: int = 8,
    world_size: int = 1,
    cache_dir: Path | None = None,
    workers: int | None = None,
    progress: ProgressCallback = ignore_events,
) -> DatasetReport:
    """Scan and plan without writing anything (the file memo is read, not updated) and report."""
    directory = cache_dir if cache_dir is not None else default_cache_dir(config)
    memo = FileMemo(directory / MEMO_FILE, readonly=True)
    scans = scan_concepts(config.data, memo=memo, workers=_workers(config, workers), progress=progress)
    return build_report(scans, _plan(config, scans, quantisation=quantisation, world_size=world_size))


def _warn_unused_mask_augmentation(scans: list[ConceptScan], progress: ProgressCallback) -> None:
    """Mask augmentations only act with masked training; say so rather than ignore them silently."""
    for scan in scans:
        names = [name for name in MASK_AUGMENTATIONS if getattr(scan.config.image, name).enabled]
        if scan.config.enabled and names:
            settings = " and ".join(f"image.{name}" for name in names)
            message = f"concept '{scan.label}': {settings} only act with masked training (loss.masked.enabled: true)"
            progress(LoaderEvent("warning", "config", message=message))


TEXT_AUGMENTATIONS = ("shuffle_tags", "tag_dropout", "random_capitalization")
"""The `caption.*` settings that draw something per caption variant."""


def _warn_fixed_text_augmentation(scans: list[ConceptScan], progress: ProgressCallback) -> None:
    """With the text cache, a caption's augmentations are drawn once per cached variant (`text_variations`),
    as in OneTrainer; kohya refuses them there. Said, so a user who expects a new draw every epoch knows."""
    for scan in scans:
        caption = scan.config.caption
        names = [f"caption.{name}" for name in TEXT_AUGMENTATIONS if getattr(caption, name)]
        if scan.config.enabled and names and scan.config.text_variations == 1:
            message = (
                f"concept '{scan.label}': with cached text encoder outputs, {' and '.join(names)} are drawn once "
                "per image and kept for every epoch; raise text_variations to cache more variants (used in turn)"
            )
            progress(LoaderEvent("warning", "config", message=message))


def _workers(config: TrainConfig, workers: int | None) -> int:
    return config.data.workers if workers is None else workers


class DataLoader:
    """Batches for one rank. Create with `build_data_loader`; close (or use as a context manager)."""

    def __init__(
        self,
        config: TrainConfig,
        *,
        cache_dir: Path,
        image_encoder: ImageEncoder | None,
        text_encoder: TextEncoder | None,
        rank: int,
        world_size: int,
        workers: int,
        quantisation: int,
        progress: ProgressCallback,
        pin_memory: bool = False,
    ) -> None:
        if not 0 <= rank < world_size:
            raise UserError(f"rank {rank} is outside the world size {world_size}")
        self.config = config
        self.rank = rank
        self.world_size = world_size
        self.quantisation = quantisation
        self.pin_memory = pin_memory
        self.image_encoder = image_encoder
        self.text_encoder = text_encoder
        self.progress = progress
        self.cache_dir = cache_dir
        self.store = CacheStore(cache_dir)
        if config.data.clear_cache and rank == 0:
            self.store.clear()
        self.memo = FileMemo(cache_dir / MEMO_FILE)
        self.pool = WorkerPool(workers)
        self.depth = max(config.data.prefetch, 2 * workers)
        self.scans = scan_concepts(config.data, memo=self.memo, workers=workers, progress=progress)
        self.memo.save()
        _raise_if_strict(config, [item for scan in self.scans for item in scan.skipped])
        masked = config.loss.masked.enabled
        self.mask_augmentation = uses_mask_augmentation(config.data.concepts, masked_training=masked)
        if not masked:
            _warn_unused_mask_augmentation(self.scans, progress)
        self.caching = config.data.cache
        self._index: CacheIndex | None = None
        self._epoch = 0
        self._position = 0
        self._resume: tuple[int, int] | None = None
        self._batch_builder: BatchBuilder | None = None
        self._live: tuple[tuple[int, int], Generator[tuple[int, int, dict[str, Any]], None, None]] | None = None
        self._rebuild()

    def _rebuild(self) -> None:
        self._close_stream()
        self._batch_builder = None
        self.plan = _plan(self.config, self.scans, quantisation=self.quantisation, world_size=self.world_size)
        self.pipeline = SamplePipeline(
            self.plan,
            image_cached=self.caching and self.image_encoder is not None,
            text_cached=self.caching and self.text_encoder is not None,
            mask_augmentation=self.mask_augmentation,
        )
        self.report = build_report(self.scans, self.plan)
        self.report.require_trainable()

    def use_encoders(self, image_encoder: ImageEncoder | None, text_encoder: TextEncoder | None) -> None:
        """Attach the model's encoders to a loader built without them.

        The trainer builds the loader first, so a dataset with nothing to train fails in seconds
        instead of after the model has loaded; the plan is rebuilt, the folders are not scanned again.
        """
        self.image_encoder = image_encoder
        self.text_encoder = text_encoder
        self._index = None
        self._rebuild()
        if self.pipeline.text_cached:
            _warn_fixed_text_augmentation(self.scans, self.progress)

    def captions(self) -> dict[str, Path]:
        """Each distinct caption the text encoder will see (as cached: one per text variation), with
        the image it belongs to; for checks that need the family's tokenizer, such as caption length.
        """
        found: dict[str, Path] = {}
        for draw in text_slots(self.plan):
            for caption in self.pipeline.cached_captions(draw):
                found.setdefault(caption, self.plan.samples[draw.sample].path)
        return found

    def describe(self) -> str:
        """The resolved per-sample graphs, one node per line."""
        return self.pipeline.describe()

    @property
    def steps_per_epoch(self) -> int:
        """Exact steps of epoch 0, and of every epoch unless `epochs_vary` (then see `steps_in_epoch`)."""
        return self.plan.steps_in_epoch(0)

    @property
    def epochs_vary(self) -> bool:
        """Fractional repeats, `samples` or multi-resolution variants can change bucket counts per epoch."""
        return not self.plan.epochs_are_alike

    def steps_in_epoch(self, epoch: int) -> int:
        return self.plan.steps_in_epoch(epoch)

    def total_steps(self, epochs: int) -> int:
        return self.plan.total_steps(epochs)

    def fill_cache(self) -> CacheStats:
        """Encode every missing entry (batched per bucket, encoders loaded only on a miss), prune stale ones.

        Images found undecodable here are dropped from the plan with a warning (an error under
        `strict`), so the epoch length can change: read `steps_per_epoch` after this call.

        The file records and the cache manifest are read again first: under torchrun another rank has
        just filled the cache (see `trainer.distributed.leaders_first`), and with its records this pass
        only finds its entries, without hashing a file or loading an encoder.
        """
        stats = CacheStats()
        self._close_stream()
        if not self.caching or (self.image_encoder is None and self.text_encoder is None):
            return stats
        self.memo = FileMemo(self.cache_dir / MEMO_FILE)
        self.store = CacheStore(self.cache_dir)
        filler = CacheFiller(
            plan=self.plan,
            pipeline=self.pipeline,
            store=self.store,
            memo=self.memo,
            pool=self.pool,
            depth=self.depth,
            encode_batch_size=self.config.data.encode_batch_size,
            progress=self.progress,
        )
        try:
            hashes = filler.hashes()
            index = CacheIndex()
            if self.image_encoder is not None:
                index = filler.images(self.image_encoder, hashes, stats)
            failed = {str(item.path) for item in stats.failed}
            if self.text_encoder is not None:
                failed_ids = {s.id for s in self.plan.samples if str(s.path) in failed}
                filler.texts(self.text_encoder, stats, skip=failed_ids.__contains__)
            if self.rank == 0:
                stats.pruned = self.store.prune(hashes)
                self.progress(LoaderEvent("progress", "prune", stats.pruned, stats.pruned))
        finally:
            self.store.save_manifest()
            self.memo.save()
        if self.rank == 0:  # the other ranks use the same entries, and write no files
            self.store.publish_lease()
        self._index = index
        self._batch_builder = None
        if stats.failed:
            self._drop(stats.failed)
        return stats

    def _drop(self, failed: list[Skipped]) -> None:
        _raise_if_strict(self.config, failed)
        by_path = {item.path: item for item in failed}
        for item in failed:
            self.progress(LoaderEvent("warning", "cache-images", message=f"skipped {item.path}: {item.reason}"))
        for scan in self.scans:
            scan.skipped += [by_path[sample.path] for sample in scan.samples if sample.path in by_path]
            scan.samples = [sample for sample in scan.samples if sample.path not in by_path]
        self._rebuild()

    def _builder(self) -> BatchBuilder:
        if self.caching and (self.image_encoder or self.text_encoder) and self._index is None:
            self.fill_cache()
        if self._batch_builder is None:
            self._batch_builder = BatchBuilder(
                self.pipeline,
                store=self.store,
                index=self._index,
                text_identity=self.text_encoder.identity() if self.text_encoder and self.pipeline.text_cached else None,
            )
        return self._batch_builder

    def _planned(self, epoch: int, start: int) -> Iterator[tuple[int, int, tuple[Draw, ...]]]:
        """This rank's shards from (epoch, start) on, running on into the following epochs."""
        while True:
            planned = self.plan.epoch(epoch)
            for position in range(start, len(planned)):
                yield epoch, position, self.plan.shard(planned[position], self.rank)
            epoch, start = epoch + 1, 0

    def _stream(self, epoch: int, start: int) -> Generator[tuple[int, int, dict[str, Any]], None, None]:
        """Prepared batches from (epoch, start), reused across `batches` calls.

        The stream does not stop at the end of an epoch: while the trainer finishes the last steps
        of one epoch the workers already prepare the first batches of the next, so the first step
        of an epoch does not wait for data. Asking for any other position starts a new stream.
        """
        if self._live is not None and self._live[0] == (epoch, start):
            return self._live[1]
        self._close_stream()
        builder = self._builder()

        def build(item: tuple[int, int, tuple[Draw, ...]]) -> tuple[int, int, dict[str, Any]]:
            return item[0], item[1], self._pinned(builder.build(item[2]))

        window = max(self.depth, CACHED_WINDOW) if self.pipeline.image_cached else self.depth
        stream = self.pool.map_ordered(build, self._planned(epoch, start), window)
        self._live = ((epoch, start), stream)
        return stream

    def _close_stream(self) -> None:
        if self._live is not None:
            self._live[1].close()
            self._live = None

    def batches(self, epoch: int, start: int | None = None) -> Iterator[dict[str, Any]]:
        """This rank's batches of `epoch` from step `start` (default: 0, or the loaded resume position)."""
        if start is None:
            start = self._resume[1] if self._resume is not None and self._resume[0] == epoch else 0
        self._resume = None
        steps = len(self.plan.epoch(epoch))
        if not 0 <= start <= steps:
            raise UserError(f"resume position {start} is outside epoch {epoch}, which has {steps} steps")
        self._epoch, self._position = epoch, start
        if start == steps:
            return
        stream = self._stream(epoch, start)
        for _, position, batch in stream:
            self._position = position + 1
            self._live = ((epoch, self._position) if self._position < steps else (epoch + 1, 0), stream)
            yield batch
            if self._position == steps:
                return

    def validation_batches(self, every_rank: bool = False) -> Iterator[tuple[int, dict[str, Any]]]:
        """Every validation-concept sample once, this rank's share (all of them with `every_rank`), with
        fixed (variation 0) augmentation; each batch with its number among all the validation batches."""
        builder = self._builder()
        numbered = self.plan.validation_batches(None if every_rank else self.rank)
        shards = [batch.draws for _, batch in numbered]
        built = self.pool.map_ordered(lambda draws: self._pinned(builder.build(draws)), shards, self.depth)
        yield from zip((number for number, _ in numbered), built, strict=True)

    def _pinned(self, batch: dict[str, Any]) -> dict[str, Any]:
        """The batch's tensors in page-locked memory (in the worker), if asked: the step then copies them to the
        GPU with `non_blocking=True`, without waiting."""
        return pin_batch(batch) if self.pin_memory else batch

    def fingerprint(self) -> str:
        """The planned samples (ids, sizes, masks) and steps per epoch: what a resumed run's remaining batches
        depend on besides the config (an image added or removed since a backup changes them)."""
        import hashlib
        import json

        samples = [[item.id, item.height, item.width, item.mask_path is not None] for item in self.plan.samples]
        text = json.dumps([samples, self.steps_per_epoch], separators=(",", ":"))
        return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]

    def state_dict(self) -> dict[str, int]:
        """(epoch, batches of it handed out so far): where `batches` should continue after a resume."""
        return {"epoch": self._epoch, "position": self._position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        epoch, position = int(state["epoch"]), int(state["position"])
        if epoch < 0 or position < 0:
            raise UserError(f"invalid data-loader state: epoch {epoch}, position {position}")
        self._epoch, self._position = epoch, position
        self._resume = (epoch, position)

    def close(self) -> None:
        self._close_stream()
        self.pool.close()
        self.store.release_lease()

    def __enter__(self) -> DataLoader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def build_data_loader(
    config: TrainConfig,
    *,
    image_encoder: ImageEncoder | None = None,
    text_encoder: TextEncoder | None = None,
    cache_dir: Path | None = None,
    rank: int = 0,
    world_size: int = 1,
    workers: int | None = None,
    quantisation: int = 8,
    progress: ProgressCallback = ignore_events,
    pin_memory: bool = False,
) -> DataLoader:
    """The loader for one rank. `quantisation`: the family's bucket step (`FamilySpec.bucket_step`).

    `cache_dir` defaults to `data.cache_dir`, else `<workspace>/cache`; `workers` to `data.workers`;
    `pin_memory` (for a CUDA device) puts each batch's tensors in page-locked memory.
    """
    return DataLoader(
        config,
        cache_dir=cache_dir if cache_dir is not None else default_cache_dir(config),
        image_encoder=image_encoder,
        text_encoder=text_encoder,
        rank=rank,
        world_size=world_size,
        workers=_workers(config, workers),
        quantisation=quantisation,
        progress=progress,
        pin_memory=pin_memory,
    )
