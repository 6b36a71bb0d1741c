"""`color` masks: no model, the pixels near any of the given colours.

Nearness is the Euclidean RGB distance divided by its largest possible value (black to white), so the
threshold is a fraction from 0 (exactly this colour) to 1 (every colour). Colours are anything Pillow
understands (`red`, `#ff8800`, `rgb(255,136,0)`) or three numbers `255,136,0`.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from onetrainer.util.errors import UserError

if TYPE_CHECKING:
    import numpy as np
    from PIL import Image

_MAX_DISTANCE = math.sqrt(3) * 255.0


def parse_colour(text: str) -> tuple[int, int, int]:
    from PIL import ImageColor

    parts = [part.strip() for part in text.split(",")]
    if len(parts) == 3 and all(part.isdigit() for part in parts):
        values = tuple(int(part) for part in parts)
        if all(0 <= value <= 255 for value in values):
            return values[0], values[1], values[2]
    try:
        rgb = ImageColor.getrgb(text.strip())
    except ValueError:
        raise UserError(
            f"not a colour: {text!r}",
            where="--prompt",
            hint="Use a name (red), #rrggbb, rgb(r,g,b) or r,g,b with values 0-255.",
        ) from None
    return rgb[0], rgb[1], rgb[2]


class ColorMasker:
    def __init__(self, colours: list[tuple[int, int, int]], *, threshold: float) -> None:
        if not colours:
            raise UserError("the color masker needs at least one colour", hint="Pass --prompt red (repeatable).")
        self.colours = colours
        self.threshold = threshold

    @classmethod
    def from_prompts(cls, prompts: list[str], *, threshold: float) -> ColorMasker:
        return cls([parse_colour(prompt) for prompt in prompts], threshold=threshold)

    def masks(self, images: list[Image.Image]) -> list[np.ndarray]:
        return [self._mask(image) for image in images]

    def _mask(self, image: Image.Image) -> np.ndarray:
        import numpy as np

        pixels = np.asarray(image.convert("RGB"), dtype=np.float32)
        selected = np.zeros(pixels.shape[:2], dtype=bool)
        for colour in self.colours:
            distance = np.sqrt(((pixels - np.asarray(colour, dtype=np.float32)) ** 2).sum(axis=2))
            selected |= distance / _MAX_DISTANCE <= self.threshold
        return selected.astype(np.float32)
