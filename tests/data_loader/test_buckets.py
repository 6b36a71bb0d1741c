"""Aspect-ratio buckets: near the target pixel count, quantised, and picked by log aspect."""

from __future__ import annotations

import pytest

from onetrainer.data_loader.buckets import bucket_set, format_bucket, nearest_bucket


@pytest.mark.parametrize(("target", "quantisation"), [(512, 8), (1024, 64), (64, 8)])
def test_buckets_keep_the_pixel_count_and_quantisation(target: int, quantisation: int) -> None:
    for height, width in bucket_set(target, quantisation):
        assert height % quantisation == 0
        assert width % quantisation == 0
        assert abs(height * width / target**2 - 1) < 0.2
        assert max(height, width) / min(height, width) <= 4.5


def test_bucket_set_is_symmetric_and_contains_the_square() -> None:
    buckets = set(bucket_set(512, 8))
    assert (512, 512) in buckets
    assert all((w, h) in buckets for h, w in buckets)
    assert len(buckets) == 17


def test_coarse_quantisation_merges_buckets() -> None:
    assert len(bucket_set(256, 64)) < len(bucket_set(256, 8))


def test_without_bucketing_there_is_one_square() -> None:
    assert bucket_set(500, 8, bucketing=False) == ((504, 504),)


def test_nearest_bucket_uses_log_aspect() -> None:
    buckets = bucket_set(512, 8)
    assert nearest_bucket(1000, 1000, buckets) == (512, 512)
    portrait = nearest_bucket(1500, 1000, buckets)
    landscape = nearest_bucket(1000, 1500, buckets)
    assert portrait == landscape[::-1]
    assert portrait[0] > portrait[1]
    assert nearest_bucket(4000, 1, buckets) == (1024, 256)


def test_format_is_width_by_height() -> None:
    assert format_bucket((768, 512)) == "512x768"
