"""Mask augmentations for masked training, applied to the decoded image before the bucket's scale/crop.

* `mask_shrink` keeps a random disc of the mask: a centre is drawn among the mask's strong pixels
  and a radius as a fraction of the distance to its farthest pixel; mask pixels outside the disc
  become 0. The shrunk mask is always a subset of the original, and its outline changes every use,
  so the model does not learn the outline itself.
* `mask_rotate_crop` cuts a rectangle around the mask's bounding box with random padding, a minimum
  size relative to the image and a random rotation, the same for image and mask. The rectangle keeps
  the image's aspect ratio and lies wholly inside the image, so nothing needs filling and the bucket
  planned from the header size still fits: the planned crop box is scaled onto the new image. If the
  rotated rectangle cannot hold the mask's box inside the image, the crop is taken unrotated.

Both run only when masked training is on and a concept asks for them (the graph then gains these
two nodes; otherwise it is unchanged), and only for samples that have a mask: an image without one
is left alone. The header-based `original_size` and `crop_top_left` still describe the source file.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from onetrainer.data_loader.graph import Node, NodeView

if TYPE_CHECKING:
    import random

    import numpy as np
    from PIL import Image

    from onetrainer.util.config.data import MaskRotateCropConfig, MaskShrinkConfig

Box = tuple[float, float, float, float]


def shrink_to_disc(
    mask: np.ndarray, rng: random.Random, min_radius: float, max_radius: float
) -> tuple[np.ndarray, tuple[int, int], float] | None:
    """The mask (uint8 [H, W]) cut to a random disc, with its centre (y, x) and radius; None if empty.

    The centre is a pixel at least half as strong as the mask's peak, so it lies inside the
    subject rather than on a faint, blurred edge. Work stays within the mask's bounding box, and
    no [H, W] array wider than a byte is made, so large masks stay cheap.
    """
    import numpy as np

    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return None
    top, bottom, left, right = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
    box = mask[top:bottom, left:right]
    strong = box >= (int(box.max()) + 1) // 2
    counts = np.cumsum(strong.sum(axis=1))
    pick = rng.randrange(int(counts[-1]))
    row = int(np.searchsorted(counts, pick, side="right"))
    col = int(np.flatnonzero(strong[row])[pick - (int(counts[row - 1]) if row else 0)])
    cy, cx = top + row, left + col
    # The farthest mask pixel is the first or the last one of some row.
    filled = box > 0
    used = filled.any(axis=1)
    first = left + filled.argmax(axis=1)[used]
    last = right - 1 - filled[:, ::-1].argmax(axis=1)[used]
    dy = (np.arange(top, bottom)[used] - cy).astype(np.float64)
    dx = np.maximum(np.abs(first - cx), np.abs(last - cx)).astype(np.float64)
    radius = math.sqrt(float((dy * dy + dx * dx).max())) * rng.uniform(min_radius, max_radius)
    ys = (np.arange(top, bottom) - cy).astype(np.float64)
    half_width = np.full(ys.shape, -1.0)
    reached = ys * ys <= radius * radius
    half_width[reached] = np.sqrt(radius * radius - ys[reached] ** 2)
    inside = np.abs(np.arange(left, right) - cx)[None, :] <= half_width[:, None]
    shrunk = np.zeros_like(mask)
    shrunk[top:bottom, left:right] = np.where(inside, box, 0)
    return shrunk, (cy, cx), radius


def _mask_shrink(view: NodeView, values: dict[str, Any]) -> dict[str, Any]:
    import numpy as np
    from PIL import Image

    mask: Image.Image | None = values["mask.decoded"]
    settings: MaskShrinkConfig = view.setting("image.mask_shrink")
    if mask is None or not settings.enabled:
        return {"mask.shrunk": mask}
    rng = view.rng()
    if rng.random() >= settings.probability:
        return {"mask.shrunk": mask}
    shrunk = shrink_to_disc(np.asarray(mask.convert("L")), rng, settings.min_radius, settings.max_radius)
    return {"mask.shrunk": mask if shrunk is None else Image.fromarray(shrunk[0])}


def _crop_size(
    size: tuple[int, int], content: tuple[float, float], padding: float, min_size: float, angle: float
) -> tuple[int, int] | None:
    """(width, height) of a crop at `angle` holding `content` (w, h) padded, or None if it cannot fit.

    The crop keeps the image's aspect ratio, is at least `min_size` of its sides, and its rotated
    footprint lies inside the image.
    """
    width, height = size
    aspect = height / width
    cos, sin = abs(math.cos(angle)), abs(math.sin(angle))
    need_w = content[0] * cos + content[1] * sin
    need_h = content[0] * sin + content[1] * cos
    wanted = max(need_w * (1 + 2 * padding), need_h * (1 + 2 * padding) / aspect, min_size * width)
    largest = min(width / (cos + aspect * sin), height / (sin + aspect * cos))
    out_w = max(1, min(math.ceil(wanted - 1e-9), math.floor(largest + 1e-9)))
    out_h = max(1, min(round(out_w * aspect), height))

    def outside() -> bool:
        return out_w * cos + out_h * sin > width + 1e-6 or out_w * sin + out_h * cos > height + 1e-6

    while out_w > 1 and outside():
        out_w -= 1
        out_h = max(1, min(round(out_w * aspect), height))
    if outside() or need_w > out_w + 1e-6 or need_h > out_h + 1e-6:
        return None
    return out_w, out_h


def _place(size: tuple[int, int], bbox: Box, crop: tuple[int, int], angle: float) -> tuple[float, float] | None:
    """The crop's centre: on the mask's box, moved just enough to keep the footprint inside the image.

    None when the moved crop no longer holds the box (possible only when rotated).
    """
    width, height = size
    left, top, right, bottom = bbox
    cos, sin = math.cos(angle), math.sin(angle)
    half_w = (crop[0] * abs(cos) + crop[1] * abs(sin)) / 2
    half_h = (crop[0] * abs(sin) + crop[1] * abs(cos)) / 2
    cx = min(max((left + right) / 2, half_w), width - half_w)
    cy = min(max((top + bottom) / 2, half_h), height - half_h)
    for x, y in ((left, top), (right, top), (left, bottom), (right, bottom)):
        u = cos * (x - cx) + sin * (y - cy)
        v = -sin * (x - cx) + cos * (y - cy)
        if abs(u) > crop[0] / 2 + 1e-6 or abs(v) > crop[1] / 2 + 1e-6:
            return None
    return cx, cy


def plan_rotate_crop(
    size: tuple[int, int], bbox: Box, *, angle: float, padding: float, min_size: float
) -> tuple[tuple[int, int], tuple[float, float], float]:
    """((width, height), centre (x, y), angle in radians) of the crop; unrotated if rotated cannot hold the box."""
    content = (bbox[2] - bbox[0], bbox[3] - bbox[1])
    for tried in (angle, 0.0) if angle else (0.0,):
        crop = _crop_size(size, content, padding, min_size, tried)
        centre = _place(size, bbox, crop, tried) if crop is not None else None
        if crop is not None and centre is not None:
            return crop, centre, tried
    return size, (size[0] / 2, size[1] / 2), 0.0


def _cut(
    image: Image.Image, crop: tuple[int, int], centre: tuple[float, float], angle: float, resample: Image.Resampling
) -> Image.Image:
    from PIL import Image

    out_w, out_h = crop
    if angle == 0:
        left = min(max(round(centre[0] - out_w / 2), 0), image.width - out_w)
        top = min(max(round(centre[1] - out_h / 2), 0), image.height - out_h)
        return image.crop((left, top, left + out_w, top + out_h))
    cos, sin = math.cos(angle), math.sin(angle)
    # Output point (x, y) samples the source at centre + R(angle) @ ((x, y) - crop / 2).
    data = (
        cos,
        -sin,
        centre[0] - cos * out_w / 2 + sin * out_h / 2,
        sin,
        cos,
        centre[1] - sin * out_w / 2 - cos * out_h / 2,
    )
    return image.transform((out_w, out_h), Image.Transform.AFFINE, data, resample=resample)


def _mask_rotate_crop(view: NodeView, values: dict[str, Any]) -> dict[str, Any]:
    from PIL import Image

    image: Image.Image = values["image.decoded"]
    mask: Image.Image | None = values["mask.shrunk"]
    box: Box = values["resize_box"]
    settings: MaskRotateCropConfig = view.setting("image.mask_rotate_crop")
    unchanged = {"image.mask_cropped": image, "mask.mask_cropped": mask, "resize_box.mask_cropped": box}
    if mask is None or not settings.enabled:
        return unchanged
    rng = view.rng()
    if rng.random() >= settings.probability:
        return unchanged
    angle = math.radians(rng.uniform(-settings.rotation, settings.rotation)) if settings.rotation else 0.0
    padding = rng.uniform(settings.min_padding, settings.max_padding)
    bbox = mask.getbbox()
    if bbox is None:
        return unchanged
    crop, centre, angle = plan_rotate_crop(image.size, bbox, angle=angle, padding=padding, min_size=settings.min_size)
    scale_x, scale_y = crop[0] / image.width, crop[1] / image.height
    return {
        "image.mask_cropped": _cut(image, crop, centre, angle, Image.Resampling.BICUBIC),
        "mask.mask_cropped": _cut(mask, crop, centre, angle, Image.Resampling.BILINEAR),
        "resize_box.mask_cropped": (box[0] * scale_x, box[1] * scale_y, box[2] * scale_x, box[3] * scale_y),
    }


def mask_nodes() -> list[Node]:
    """Between `mask_source` and `resize_crop`; `resize_crop` then reads the `*.mask_cropped` values."""
    return [
        Node("mask_shrink", ("mask.decoded",), ("mask.shrunk",), _mask_shrink, ("image.mask_shrink",)),
        Node(
            "mask_rotate_crop",
            ("image.decoded", "mask.shrunk", "resize_box"),
            ("image.mask_cropped", "mask.mask_cropped", "resize_box.mask_cropped"),
            _mask_rotate_crop,
            ("image.mask_rotate_crop",),
        ),
    ]
