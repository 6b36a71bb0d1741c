"""The plan layer: from samples to the exact list of batches of every epoch, before any pixel loads.

An epoch's plan is a pure function of (samples, settings, seed, epoch): no state carries between
epochs, so the plan of epoch 7 can be computed directly for a resume, and its length is known
exactly before training starts (for the LR schedule and the progress bar).

How an epoch is composed:

* **Repeats.** Each training concept is an endless stream of its N images, pass after pass, each pass
  in its own seeded order. Epoch e takes stream positions [e*S, (e+1)*S), with S = `samples`, or
  floor(N * `repeats`) (at least 1). So `repeats: 0.5` trains half the images per epoch and the other
  half the next, and `repeats: 2` uses every image twice; a use's pass number is its repeat index,
  which keys its augmentation, so repeats of one image in an epoch are augmented differently.
* **Variations and buckets.** A use's slot is `pass % image_variations`: which cached variant it
  reads and, with several resolutions, which target (chosen per sample and slot) its bucket uses.
* **Batches.** Uses are grouped by bucket, shuffled by (seed, epoch, bucket) and cut into global
  batches of `batch_size * world_size`, each one resolution. Rule for leftovers (no image is ever
  dropped): a bucket's last, incomplete batch is padded with uses from the start of the same
  shuffled bucket, marked as copies (`copy > 0`, augmented anew when not cached); the dataset report
  lists every bucket smaller than a batch. Then the batches are shuffled by (seed, epoch).
* **Sharding.** Rank r takes slice [r*batch_size, (r+1)*batch_size) of each global batch, so every
  rank trains the same bucket at each step.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from dataclasses import dataclass

from onetrainer.data_loader.buckets import Bucket, bucket_set, nearest_bucket
from onetrainer.data_loader.rng import keyed_random
from onetrainer.data_loader.scan import Sample
from onetrainer.util.config.data import ConceptConfig, ConceptType


@dataclass(frozen=True)
class Draw:
    """One use of a sample in an epoch."""

    sample: int
    """Index into `DataPlan.samples`."""
    pass_index: int
    """Which pass over its concept this use belongs to: the repeat index."""
    slot: int
    """`pass_index % image_variations`: the cached variant and the target resolution."""
    bucket: Bucket
    copy: int = 0
    """0 for a planned use; 1, 2, ... for the uses padding a bucket's last batch."""


@dataclass(frozen=True)
class PlannedBatch:
    bucket: Bucket
    draws: tuple[Draw, ...]


def targets_of(concept: ConceptConfig, default: int | list[int]) -> list[int]:
    value = concept.resolution if concept.resolution is not None else default
    return list(value) if isinstance(value, list) else [value]


class DataPlan:
    """Every epoch's batches, computed on demand from the samples and settings."""

    def __init__(
        self,
        samples: list[Sample],
        concepts: list[ConceptConfig],
        labels: list[str],
        *,
        resolution: int | list[int],
        seed: int,
        batch_size: int,
        world_size: int = 1,
        quantisation: int = 8,
        bucketing: bool = True,
    ) -> None:
        self.samples = samples
        self.concepts = concepts
        self.labels = labels
        self.resolution = resolution
        self.seed = seed
        self.batch_size = batch_size
        self.world_size = world_size
        self.quantisation = quantisation
        self.bucketing = bucketing
        self.global_batch = batch_size * world_size
        self._members: dict[int, list[int]] = defaultdict(list)
        self._validation: list[int] = []
        for index, sample in enumerate(samples):
            if concepts[sample.concept].type is ConceptType.VALIDATION:
                self._validation.append(index)
            else:
                self._members[sample.concept].append(index)
        self._buckets: dict[tuple[int, int], Bucket] = {}
        self._epochs: dict[int, list[PlannedBatch]] = {}
        self._steps: dict[int, int] = {}

    @property
    def trains(self) -> bool:
        return bool(self._members)

    def concept_samples_per_epoch(self, concept: int) -> int:
        count = len(self._members.get(concept, ()))
        if count == 0:
            return 0
        config = self.concepts[concept]
        if config.samples is not None:
            return config.samples
        return max(1, math.floor(count * config.repeats + 1e-9))

    def bucket_of(self, sample: int, slot: int) -> Bucket:
        key = (sample, slot)
        bucket = self._buckets.get(key)
        if bucket is None:
            record = self.samples[sample]
            concept = self.concepts[record.concept]
            targets = targets_of(concept, self.resolution)
            target = targets[0]
            if len(targets) > 1:
                target = keyed_random(self.seed, concept.seed, "resolution", record.id, slot).choice(targets)
            buckets = bucket_set(target, self.quantisation, self.bucketing)
            bucket = self._buckets[key] = nearest_bucket(record.height, record.width, buckets)
        return bucket

    def _concept_draws(self, concept: int, epoch: int) -> list[Draw]:
        members = self._members[concept]
        count = len(members)
        per_epoch = self.concept_samples_per_epoch(concept)
        config = self.concepts[concept]
        orders: dict[int, list[int]] = {}
        draws = []
        for position in range(epoch * per_epoch, (epoch + 1) * per_epoch):
            pass_index, offset = divmod(position, count)
            order = orders.get(pass_index)
            if order is None:
                order = list(members)
                keyed_random(self.seed, config.seed, "pass-order", self.labels[concept], pass_index).shuffle(order)
                orders[pass_index] = order
            sample = order[offset]
            slot = pass_index % config.image_variations
            draws.append(Draw(sample, pass_index, slot, self.bucket_of(sample, slot)))
        return draws

    def epoch_draws(self, epoch: int) -> list[Draw]:
        """Every planned use of the epoch (no padding), in concept and stream order."""
        return [draw for concept in sorted(self._members) for draw in self._concept_draws(concept, epoch)]

    def epoch(self, epoch: int) -> list[PlannedBatch]:
        cached = self._epochs.get(epoch)
        if cached is not None:
            return cached
        by_bucket: dict[Bucket, list[Draw]] = defaultdict(list)
        for draw in self.epoch_draws(epoch):
            by_bucket[draw.bucket].append(draw)
        batches: list[PlannedBatch] = []
        size = self.global_batch
        for bucket in sorted(by_bucket):
            draws = by_bucket[bucket]
            keyed_random(self.seed, "bucket-shuffle", epoch, bucket).shuffle(draws)
            for start in range(0, len(draws), size):
                chunk = draws[start : start + size]
                missing = size - len(chunk)
                for k in range(missing):
                    source = draws[k % len(draws)]
                    chunk.append(Draw(source.sample, source.pass_index, source.slot, bucket, 1 + k // len(draws)))
                batches.append(PlannedBatch(bucket, tuple(chunk)))
        keyed_random(self.seed, "batch-order", epoch).shuffle(batches)
        if len(self._epochs) >= 2:
            self._epochs.pop(next(iter(self._epochs)))
        self._epochs[epoch] = batches
        return batches

    @property
    def epochs_are_alike(self) -> bool:
        """True when every epoch has the same bucket counts (so the same number of steps)."""
        for concept, members in self._members.items():
            config = self.concepts[concept]
            whole_passes = self.concept_samples_per_epoch(concept) % len(members) == 0
            one_target = len(targets_of(config, self.resolution)) == 1 or config.image_variations == 1
            if not (whole_passes and one_target):
                return False
        return True

    def largest_side(self) -> int:
        """The longest side of any bucket a sample (validation ones too) can be drawn in, at any of its
        concept's resolutions; 0 without samples."""
        sides = [0]
        for record in self.samples:
            for target in targets_of(self.concepts[record.concept], self.resolution):
                buckets = bucket_set(target, self.quantisation, self.bucketing)
                sides.append(max(nearest_bucket(record.height, record.width, buckets)))
        return max(sides)

    def bucket_counts(self, epoch: int = 0) -> Counter[Bucket]:
        return Counter(draw.bucket for draw in self.epoch_draws(epoch))

    def steps_in_epoch(self, epoch: int) -> int:
        if self.epochs_are_alike:
            epoch = 0
        steps = self._steps.get(epoch)
        if steps is None:
            counts = self.bucket_counts(epoch).values()
            steps = self._steps[epoch] = sum(math.ceil(count / self.global_batch) for count in counts)
        return steps

    def total_steps(self, epochs: int) -> int:
        if self.epochs_are_alike:
            return epochs * self.steps_in_epoch(0)
        return sum(self.steps_in_epoch(epoch) for epoch in range(epochs))

    def shard(self, batch: PlannedBatch, rank: int) -> tuple[Draw, ...]:
        return batch.draws[rank * self.batch_size : (rank + 1) * self.batch_size]

    def validation_batches(self, rank: int | None = 0) -> list[tuple[int, PlannedBatch]]:
        """Each validation sample once, slot 0, grouped by bucket; batches numbered, and dealt round-robin to
        ranks (all of them with `rank=None`). The number seeds the batch's noise (`trainer.validation`), so
        the loss does not depend on how many ranks share the batches."""
        by_bucket: dict[Bucket, list[Draw]] = defaultdict(list)
        for sample in self._validation:
            by_bucket[self.bucket_of(sample, 0)].append(Draw(sample, 0, 0, self.bucket_of(sample, 0)))
        batches = [
            PlannedBatch(bucket, tuple(draws[start : start + self.batch_size]))
            for bucket, draws in sorted(by_bucket.items())
            for start in range(0, len(draws), self.batch_size)
        ]
        numbered = list(enumerate(batches))
        return numbered if rank is None else numbered[rank :: self.world_size]
