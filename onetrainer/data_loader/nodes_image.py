"""Image nodes: decode, crop to the bucket, augment, and hand over pixels in [-1, 1] plus a mask.

The crop and the flip are planned from the header size alone (`flip`, `geometry`), so the size
conditioning some denoisers take (original size, crop top-left) and a cached sample's crop are known
without decoding. `crop_top_left` is the crop as the model sees it: after a horizontal flip the crop
sits mirrored in the resized image, so its left edge is `resized_width - left - target_width`, as
sd-scripts computes it. Decoding then resizes only the crop box (Pillow's
`resize(box=...)`), with Lanczos, which is antialiased when shrinking. Every geometric step is
applied identically to the image and its mask; colour steps touch only the image. Each step is its
own node with its own random stream, so turning one augmentation on changes no other. With masked
training, the mask augmentations (`nodes_mask`) sit between the mask source and the bucket's crop.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from onetrainer.data_loader.files import decode_image, decode_mask
from onetrainer.data_loader.graph import Node, NodeView
from onetrainer.data_loader.nodes_mask import mask_nodes
from onetrainer.util.config.data import AlphaMode

if TYPE_CHECKING:
    import torch
    from PIL import Image

IMAGE_SOURCES = ("image_path", "mask_path", "source_size", "target_size")
"""Filled in per sample: the paths, the header size (h, w) and the bucket (h, w)."""


def _flip_choice(view: NodeView, values: dict[str, Any]) -> dict[str, Any]:
    """Whether this use of the sample is mirrored: decided before decoding, so the geometry can say so."""
    return {"flipped": view.rng().random() < float(view.setting("image.flip"))}


def _geometry(view: NodeView, values: dict[str, Any]) -> dict[str, Any]:
    """Scale to cover the bucket, then place the crop: centred, or jittered within the slack."""
    height, width = values["source_size"]
    target_h, target_w = values["target_size"]
    scale = max(target_h / height, target_w / width)
    resized_h, resized_w = max(target_h, round(height * scale)), max(target_w, round(width * scale))
    jitter = float(view.setting("image.crop_jitter"))
    rng = view.rng()
    offsets = []
    for slack in (resized_h - target_h, resized_w - target_w):
        offset = slack / 2 + (rng.random() * 2 - 1) * jitter * slack / 2
        offsets.append(min(slack, max(0, round(offset))))
    top, left = offsets
    scale_y, scale_x = resized_h / height, resized_w / width
    box = (left / scale_x, top / scale_y, (left + target_w) / scale_x, (top + target_h) / scale_y)
    seen_left = resized_w - left - target_w if values["flipped"] else left
    return {"resize_box": box, "crop_top_left": (top, seen_left), "original_size": (height, width)}


def _decode(view: NodeView, values: dict[str, Any]) -> dict[str, Any]:
    red, green, blue = view.setting("image.alpha_background")
    image, alpha = decode_image(values["image_path"], (red, green, blue))
    return {"image.decoded": image, "alpha": alpha}


def _mask_source(view: NodeView, values: dict[str, Any]) -> dict[str, Any]:
    """The mask file wins; otherwise the alpha channel when `image.alpha` is `mask`; otherwise none."""
    image: Image.Image = values["image.decoded"]
    if values["mask_path"] is not None:
        return {"mask.decoded": decode_mask(values["mask_path"], image.size)}
    if values["alpha"] is not None and view.setting("image.alpha") is AlphaMode.MASK:
        return {"mask.decoded": values["alpha"]}
    return {"mask.decoded": None}


def _to_tensor(image: Image.Image) -> torch.Tensor:
    import numpy as np
    import torch

    array = np.asarray(image, dtype=np.uint8)
    if array.ndim == 2:
        array = array[:, :, None]
    return torch.from_numpy(array.copy()).permute(2, 0, 1).float().div_(255.0)


def _resize_crop_node(image_name: str, mask_name: str, box_name: str) -> Node:
    """Scale the crop box to the bucket; reads the decoded image, or the mask augmentations' output."""

    def run(view: NodeView, values: dict[str, Any]) -> dict[str, Any]:
        return _resize_crop(values[image_name], values[mask_name], values[box_name], values["target_size"])

    return Node("resize_crop", (image_name, mask_name, box_name, "target_size"), ("image.cropped", "mask.cropped"), run)


def _resize_crop(
    source: Image.Image,
    mask: Image.Image | None,
    box: tuple[float, float, float, float],
    target_size: tuple[int, int],
) -> dict[str, Any]:
    import torch
    from PIL import Image

    target_h, target_w = target_size
    image = source.resize((target_w, target_h), Image.Resampling.LANCZOS, box=box)
    if mask is None:
        mask_tensor = torch.ones(1, target_h, target_w)
    else:
        mask_tensor = _to_tensor(mask.resize((target_w, target_h), Image.Resampling.BILINEAR, box=box))
    return {"image.cropped": _to_tensor(image), "mask.cropped": mask_tensor}


def _mirror(view: NodeView, values: dict[str, Any]) -> dict[str, Any]:
    image, mask = values["image.cropped"], values["mask.cropped"]
    if values["flipped"]:
        image, mask = image.flip(-1), mask.flip(-1)
    return {"image.flipped": image, "mask.flipped": mask}


def _rotate(view: NodeView, values: dict[str, Any]) -> dict[str, Any]:
    """Rotate about the centre, keeping the size; corners are reflected and masked out (mask 0)."""
    import torch
    import torch.nn.functional as F

    image, mask = values["image.flipped"], values["mask.flipped"]
    limit = float(view.setting("image.rotation"))
    if limit == 0:
        return {"image.rotated": image, "mask.rotated": mask}
    angle = math.radians(view.rng().uniform(-limit, limit))
    height, width = image.shape[-2:]
    cos, sin = math.cos(angle), math.sin(angle)
    theta = torch.tensor([[cos, -sin * height / width, 0.0], [sin * width / height, cos, 0.0]]).unsqueeze(0)
    grid = F.affine_grid(theta, [1, 1, height, width], align_corners=False)
    rotated = F.grid_sample(image[None], grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    rotated_mask = F.grid_sample(mask[None], grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return {"image.rotated": rotated[0].clamp_(0, 1), "mask.rotated": rotated_mask[0].clamp_(0, 1)}


_LUMA = (0.299, 0.587, 0.114)


def _luma(image: torch.Tensor) -> torch.Tensor:
    red, green, blue = image[0], image[1], image[2]
    return (_LUMA[0] * red + _LUMA[1] * green + _LUMA[2] * blue)[None]


def _factor(view: NodeView, setting: str) -> float:
    strength = float(view.setting(setting))
    return 1.0 + view.rng().uniform(-strength, strength) if strength else 1.0


def _brightness(view: NodeView, values: dict[str, Any]) -> dict[str, Any]:
    return {"image.bright": (values["image.rotated"] * _factor(view, "image.brightness")).clamp_(0, 1)}


def _contrast(view: NodeView, values: dict[str, Any]) -> dict[str, Any]:
    image = values["image.bright"]
    mean = _luma(image).mean()
    return {"image.contrasted": ((image - mean) * _factor(view, "image.contrast") + mean).clamp_(0, 1)}


def _saturation(view: NodeView, values: dict[str, Any]) -> dict[str, Any]:
    image = values["image.contrasted"]
    grey = _luma(image)
    return {"image.saturated": ((image - grey) * _factor(view, "image.saturation") + grey).clamp_(0, 1)}


_RGB_TO_YIQ = ((0.299, 0.587, 0.114), (0.596, -0.274, -0.322), (0.211, -0.523, 0.312))


def _hue(view: NodeView, values: dict[str, Any]) -> dict[str, Any]:
    """Shift hue by rotating the colour (I, Q) plane of YIQ, which keeps luminance."""
    import torch

    image = values["image.saturated"]
    strength = float(view.setting("image.hue"))
    if not strength:
        return {"image.hued": image}
    angle = 2 * math.pi * view.rng().uniform(-strength, strength)
    to_yiq = torch.tensor(_RGB_TO_YIQ)
    cos, sin = math.cos(angle), math.sin(angle)
    rotate = torch.tensor([[1.0, 0.0, 0.0], [0.0, cos, -sin], [0.0, sin, cos]])
    matrix = torch.linalg.inv(to_yiq) @ rotate @ to_yiq
    shifted = torch.einsum("ij,jhw->ihw", matrix, image)
    return {"image.hued": shifted.clamp_(0, 1)}


def _finish(view: NodeView, values: dict[str, Any]) -> dict[str, Any]:
    """Pixels to [-1, 1]; the mask to 8 bits, the precision mask files have and the cache stores."""
    import torch

    pixels = values["image.hued"].mul(2).sub_(1).contiguous()
    mask = values["mask.rotated"].mul(255).round_().to(torch.uint8).contiguous()
    return {"pixels": pixels, "mask": mask}


def image_nodes(*, mask_augmentation: bool = False) -> list[Node]:
    """The standard image nodes; with `mask_augmentation`, the mask nodes sit before `resize_crop`."""
    if mask_augmentation:
        masks = mask_nodes()
        resize_crop = _resize_crop_node("image.mask_cropped", "mask.mask_cropped", "resize_box.mask_cropped")
    else:
        masks = []
        resize_crop = _resize_crop_node("image.decoded", "mask.decoded", "resize_box")
    return [
        Node("flip", (), ("flipped",), _flip_choice, ("image.flip",)),
        Node(
            "geometry",
            ("source_size", "target_size", "flipped"),
            ("resize_box", "crop_top_left", "original_size"),
            _geometry,
            ("image.crop_jitter",),
        ),
        Node("decode", ("image_path",), ("image.decoded", "alpha"), _decode, ("image.alpha_background",)),
        Node("mask_source", ("mask_path", "alpha", "image.decoded"), ("mask.decoded",), _mask_source, ("image.alpha",)),
        *masks,
        resize_crop,
        Node("mirror", ("image.cropped", "mask.cropped", "flipped"), ("image.flipped", "mask.flipped"), _mirror),
        Node(
            "rotate", ("image.flipped", "mask.flipped"), ("image.rotated", "mask.rotated"), _rotate, ("image.rotation",)
        ),
        Node("brightness", ("image.rotated",), ("image.bright",), _brightness, ("image.brightness",)),
        Node("contrast", ("image.bright",), ("image.contrasted",), _contrast, ("image.contrast",)),
        Node("saturation", ("image.contrasted",), ("image.saturated",), _saturation, ("image.saturation",)),
        Node("hue", ("image.saturated",), ("image.hued",), _hue, ("image.hue",)),
        Node("finish", ("image.hued", "mask.rotated"), ("pixels", "mask"), _finish),
    ]
