"""Aspect-ratio buckets: a few resolutions near the target pixel count, one per batch.

Cropping every image square throws away the sides of portraits and landscapes; one resolution per
image cannot be batched. Buckets are the compromise: for each of a fixed set of aspect ratios (1:1 to
1:4 and their transposes) the resolution with about `target`² pixels, each side rounded to the
family's quantisation (its bucket step: 8 for a VAE that downsamples by 8, more for denoisers that
patch the latents or were trained on coarser sizes). An image goes to the
bucket whose aspect ratio is closest on a log scale, so 1:2 and 2:1 are equally far from 1:1.
"""

from __future__ import annotations

import math
from functools import cache

Bucket = tuple[int, int]
"""(height, width) in pixels."""

ASPECTS = (1.0, 1.25, 1.5, 1.75, 2.0, 2.5, 3.0, 3.5, 4.0)
"""Long side over short side of the buckets; each is used upright and transposed."""


def _round_to(value: float, quantisation: int) -> int:
    return max(quantisation, math.floor(value / quantisation + 0.5) * quantisation)


@cache
def bucket_set(target: int, quantisation: int, bucketing: bool = True) -> tuple[Bucket, ...]:
    """Every bucket of one target resolution, sorted; only the square one without bucketing."""
    if not bucketing:
        side = _round_to(target, quantisation)
        return ((side, side),)
    buckets: set[Bucket] = set()
    for aspect in ASPECTS:
        long_side = _round_to(target * math.sqrt(aspect), quantisation)
        short_side = _round_to(target / math.sqrt(aspect), quantisation)
        buckets.add((long_side, short_side))
        buckets.add((short_side, long_side))
    return tuple(sorted(buckets))


def nearest_bucket(height: int, width: int, buckets: tuple[Bucket, ...]) -> Bucket:
    """The bucket closest in log aspect ratio; ties go to the first in sorted order."""
    aspect = math.log(height / width)
    return min(buckets, key=lambda bucket: abs(math.log(bucket[0] / bucket[1]) - aspect))


def format_bucket(bucket: Bucket) -> str:
    """`WxH`, the way people write resolutions."""
    return f"{bucket[1]}x{bucket[0]}"
