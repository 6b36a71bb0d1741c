"""Stochastic rounding of fp32 values to bf16: unbiased, so updates far below bf16's resolution still count.

Rounding to nearest maps a weight plus an update smaller than half a bf16 step (1/256 of the weight)
back to the weight itself, every step: a bf16 model stops learning. Rounding up with a probability equal
to the distance from the lower neighbour keeps the expected value exact, so on average the update
survives.

bf16 is the upper half of an fp32's bits. Adding a uniform random integer in [0, 2^16) to the bit
pattern and clearing the lower half rounds the magnitude up exactly when the random number exceeds the
remaining distance, for both signs (the sign bit is not touched), and carries correctly into the exponent.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

LOW_BITS = 1 << 16
_HIGH_MASK = -LOW_BITS
"""0xFFFF0000 as an int32: keeps the sign, exponent and the seven mantissa bits bf16 has."""


def stochastic_round_to_bf16(value: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """`value` (fp32) rounded to one of its two bf16 neighbours, up with the probability of its distance."""
    import torch

    bits = value.detach().float().contiguous().view(torch.int32)
    noise = torch.randint(0, LOW_BITS, bits.shape, dtype=torch.int32, device=bits.device, generator=generator)
    return ((bits + noise) & _HIGH_MASK).view(torch.float32).to(torch.bfloat16)


def rounding_seed(seed: int, step: int, index: int) -> int:
    """The seed of one tensor's rounding at one step: keyed, so a resumed run draws the same as a straight one."""
    return (seed * 1_000_003 + step * 65_537 + index) % (2**63 - 1)
