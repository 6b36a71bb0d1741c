"""`check_side`: multiples of the family's step, at most `MAX_SIDE`, with the nearest good sizes."""

from __future__ import annotations

import pytest

from onetrainer.model_sampler.sizes import MAX_SIDE, check_side
from onetrainer.util.errors import UserError


def test_multiples_up_to_the_maximum_pass() -> None:
    assert check_side("width", 8, 8) == 8
    assert check_side("width", MAX_SIDE, 8) == MAX_SIDE
    assert check_side("width", 1024, 64) == 1024


@pytest.mark.parametrize(
    ("value", "step", "message", "hint"),
    [
        (100000, 8, "height 100000 is larger than the 4096 px", "at most 4096"),
        (100, 8, "height 100 is not a positive multiple of 8", "use 96 or 104"),
        (1000, 64, "height 1000 is not a positive multiple of 64", "use 960 or 1024"),
        (3, 8, "height 3 is not a positive multiple of 8", "use 8"),
        (-16, 8, "height -16 is not a positive multiple of 8", "use 8"),
    ],
)
def test_other_sizes_are_user_errors_with_a_fix(value: int, step: int, message: str, hint: str) -> None:
    with pytest.raises(UserError, match=message) as caught:
        check_side("height", value, step)
    assert hint in (caught.value.hint or "")
