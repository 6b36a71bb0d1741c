"""The plan: exact epochs of one-resolution batches, repeats, padding, sharding, all from (seed, epoch)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from onetrainer.data_loader.plan import DataPlan
from onetrainer.data_loader.scan import Sample
from onetrainer.util.config.data import ConceptConfig

SIZES = [(64, 64), (64, 96), (96, 64), (64, 128), (80, 80), (128, 64), (64, 64)]


def _samples(concept: int, count: int, prefix: str) -> list[Sample]:
    return [
        Sample(f"{prefix}/{i}.png", concept, Path(f"/x/{prefix}/{i}.png"), *SIZES[i % len(SIZES)], None, None)
        for i in range(count)
    ]


def _plan(tmp_path: Path, concepts: list[dict], counts: list[int], **kwargs) -> DataPlan:
    configs = [ConceptConfig(path=tmp_path, **extra) for extra in concepts]
    samples = [s for index, count in enumerate(counts) for s in _samples(index, count, f"c{index}")]
    options = {"resolution": 64, "seed": 3, "batch_size": 2} | kwargs
    return DataPlan(samples, configs, [f"c{i}" for i in range(len(configs))], **options)


CASES = [
    ([{}], [7], {}),
    ([{"repeats": 0.5}], [7], {}),
    ([{"repeats": 2.5}, {"samples": 3}], [7, 5], {"batch_size": 3}),
    ([{"image_variations": 3}], [9], {"resolution": [64, 96, 128]}),
    ([{}, {"type": "validation"}], [6, 4], {"world_size": 2}),
]


@pytest.mark.parametrize(("concepts", "counts", "options"), CASES)
def test_epoch_length_is_exact_and_batches_are_one_bucket(tmp_path, concepts, counts, options) -> None:
    plan = _plan(tmp_path, concepts, counts, **options)
    for epoch in range(4):
        batches = plan.epoch(epoch)
        assert plan.steps_in_epoch(epoch) == len(batches)
        for batch in batches:
            assert len(batch.draws) == plan.global_batch
            assert {draw.bucket for draw in batch.draws} == {batch.bucket}
    assert plan.total_steps(4) == sum(len(plan.epoch(epoch)) for epoch in range(4))


@pytest.mark.parametrize(("concepts", "counts", "options"), CASES)
def test_no_planned_use_is_dropped(tmp_path, concepts, counts, options) -> None:
    plan = _plan(tmp_path, concepts, counts, **options)
    for epoch in range(3):
        used = Counter((d.sample, d.pass_index) for b in plan.epoch(epoch) for d in b.draws if d.copy == 0)
        assert used == Counter((d.sample, d.pass_index) for d in plan.epoch_draws(epoch))


def test_small_bucket_is_padded_with_copies_from_itself(tmp_path) -> None:
    plan = _plan(tmp_path, [{}], [3], batch_size=4)
    batches = plan.epoch(0)
    for batch in batches:
        originals = [d for d in batch.draws if d.copy == 0]
        copies = [d for d in batch.draws if d.copy > 0]
        assert len(originals) + len(copies) == 4
        assert {d.sample for d in copies} <= {d.sample for d in originals}


def test_half_repeats_rotate_through_the_concept(tmp_path) -> None:
    plan = _plan(tmp_path, [{"repeats": 0.5}], [8])
    first, second = ({d.sample for d in plan.epoch_draws(e)} for e in (0, 1))
    assert len(first) == len(second) == 4
    assert first | second == set(range(8))


def test_double_repeats_use_each_image_twice_with_distinct_pass(tmp_path) -> None:
    plan = _plan(tmp_path, [{"repeats": 2}], [5])
    draws = plan.epoch_draws(0)
    assert Counter(d.sample for d in draws) == Counter(dict.fromkeys(range(5), 2))
    assert all(len({d.pass_index for d in draws if d.sample == i}) == 2 for i in range(5))


def test_fixed_samples_per_epoch(tmp_path) -> None:
    plan = _plan(tmp_path, [{"samples": 3}], [10])
    assert plan.concept_samples_per_epoch(0) == 3
    assert len(plan.epoch_draws(5)) == 3


def test_same_seed_same_plan_other_seed_or_epoch_differs(tmp_path) -> None:
    def order(seed: int, epoch: int) -> list:
        return [b.draws for b in _plan(tmp_path, [{}], [40], seed=seed).epoch(epoch)]

    assert order(1, 0) == order(1, 0)
    assert order(1, 0) != order(2, 0)
    assert order(1, 0) != order(1, 1)


def test_ranks_get_disjoint_slices_of_the_same_bucket(tmp_path) -> None:
    plan = _plan(tmp_path, [{}], [16], world_size=2)
    for batch in plan.epoch(0):
        first, second = plan.shard(batch, 0), plan.shard(batch, 1)
        assert len(first) == len(second) == 2
        assert first + second == batch.draws
        assert {d.bucket for d in first} == {d.bucket for d in second}


def test_validation_concepts_are_kept_out_of_training(tmp_path) -> None:
    plan = _plan(tmp_path, [{}, {"type": "validation"}], [6, 5])
    trained = {plan.samples[d.sample].concept for b in plan.epoch(0) for d in b.draws}
    validated = [plan.samples[d.sample].concept for _, b in plan.validation_batches() for d in b.draws]
    assert trained == {0}
    assert validated == [1] * 5


def test_validation_batches_are_dealt_to_ranks_or_all_given_to_each(tmp_path) -> None:
    plan = _plan(tmp_path, [{}, {"type": "validation"}], [6, 5], world_size=2, batch_size=2)
    every = plan.validation_batches(None)
    assert len(every) >= 2
    assert [number for number, _ in every] == list(range(len(every)))
    assert [plan.validation_batches(rank) for rank in (0, 1)] == [every[0::2], every[1::2]]


def test_multi_resolution_picks_a_target_per_sample_and_slot(tmp_path) -> None:
    plan = _plan(tmp_path, [{"image_variations": 4}], [12], resolution=[64, 128])
    sides = {max(plan.bucket_of(i, slot)) for i in range(12) for slot in range(4)}
    assert any(side >= 128 for side in sides)
    assert any(side <= 96 for side in sides)
    assert plan.bucket_of(0, 1) == plan.bucket_of(0, 1)


def test_steps_follow_bucket_counts(tmp_path) -> None:
    plan = _plan(tmp_path, [{}], [7], batch_size=2)
    counts = plan.bucket_counts(0)
    assert plan.steps_in_epoch(0) == sum(-(-count // 2) for count in counts.values())
    assert plan.epochs_are_alike


def test_per_concept_resolution_overrides_the_data_resolution(tmp_path) -> None:
    plan = _plan(tmp_path, [{}, {"resolution": 128}], [7, 7], resolution=64)
    small = {plan.bucket_of(i, 0) for i in range(7)}
    large = {plan.bucket_of(i, 0) for i in range(7, 14)}
    assert all(w * h <= 64 * 64 * 1.2 for w, h in small)
    assert all(w * h >= 128 * 128 * 0.8 for w, h in large)
    assert (64, 64) in small
    assert (128, 128) in large


def test_concept_seed_changes_only_its_own_concept_choices(tmp_path) -> None:
    def halves(seed_a: int, seed_b: int) -> tuple[set[int], set[int]]:
        plan = _plan(tmp_path, [{"repeats": 0.5, "seed": seed_a}, {"repeats": 0.5, "seed": seed_b}], [40, 40])
        used = {d.sample for d in plan.epoch_draws(0)}
        return {i for i in used if i < 40}, {i for i in used if i >= 40}

    base_a, base_b = halves(0, 0)
    assert halves(0, 0) == (base_a, base_b)
    other_a, other_b = halves(5, 0)
    assert other_a != base_a
    assert other_b == base_b
