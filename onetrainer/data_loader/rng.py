"""Keyed randomness: every random choice draws from a generator seeded by what it is about.

mgds seeded each module by its position in the list, so inserting a module shifted every later
module's stream, and a repeated image got the same augmentation twice. Here a seed is a hash of named
parts (run seed, epoch or variation, stable sample id, node name), so a choice depends only on those:
not on worker count, thread timing, list position or what else ran before it.
"""

from __future__ import annotations

import hashlib
import random
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


def keyed_seed(*parts: object) -> int:
    """A 64-bit seed from the parts' text, stable across processes, platforms and Python versions."""
    text = "\x1f".join(f"{type(part).__name__}:{part}" for part in parts)
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "little")


def keyed_random(*parts: object) -> random.Random:
    return random.Random(keyed_seed(*parts))


def keyed_generator(*parts: object) -> torch.Generator:
    import torch

    generator = torch.Generator()
    generator.manual_seed(keyed_seed(*parts) % (2**63))
    return generator
