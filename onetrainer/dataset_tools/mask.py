"""`mask_folder`: write `name-masklabel.png` (white = train on this pixel) beside every image.

After the backend's thresholded mask, `expand` grows it by that many pixels (a square dilation) and
`smooth` blurs its edge with a Gaussian of that radius. Modes combine it with the mask already on
disk: `replace` overwrites, `fill` masks only images without a mask, `add` unions (old + alpha·new),
`subtract` removes (old − alpha·new), `blend` mixes ((1 − alpha)·old + alpha·new). A missing mask
counts as black for `add`/`blend` and as white (the whole image trains) for `subtract`.

An image where the backend found nothing still gets its (black) mask, and is listed in the summary's
`empty`, so that a prompt or threshold that matches nothing is reported instead of passing silently.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from onetrainer.data_loader.files import decode_mask
from onetrainer.dataset_tools.files import mask_path
from onetrainer.dataset_tools.modes import MaskMode
from onetrainer.dataset_tools.progress import ProgressCallback, ToolSummary, no_progress
from onetrainer.dataset_tools.runner import run_batches, select_images
from onetrainer.util.atomic import atomic_file
from onetrainer.util.errors import UserError

if TYPE_CHECKING:
    import numpy as np
    from PIL import Image


@dataclass(frozen=True)
class MaskRequest:
    directory: Path
    prompts: list[str] = field(default_factory=list)
    model: str = "clipseg"
    threshold: float | None = None
    """None: the model's default (`maskers.DEFAULT_THRESHOLDS`)."""
    smooth: int = 5
    expand: int = 10
    mode: MaskMode = MaskMode.FILL
    alpha: float = 1.0
    recursive: bool = False
    batch_size: int = 4
    device: str = "auto"
    dtype: str = "auto"
    """fp32, fp16, bf16 or auto (`util.devices`)."""


def expand_mask(mask: np.ndarray, pixels: int) -> np.ndarray:
    """Grow the masked area by `pixels` in every direction (a separable square maximum filter)."""
    import numpy as np

    if pixels <= 0:
        return mask
    window = 2 * pixels + 1
    for axis in (0, 1):
        padding = [(0, 0), (0, 0)]
        padding[axis] = (pixels, pixels)
        padded = np.pad(mask, padding, mode="constant", constant_values=0.0)
        mask = np.lib.stride_tricks.sliding_window_view(padded, window, axis=axis).max(axis=-1)
    return mask


def smooth_mask(mask: np.ndarray, radius: int) -> np.ndarray:
    import numpy as np
    from PIL import Image, ImageFilter

    if radius <= 0:
        return mask
    image = Image.fromarray(np.round(mask * 255.0).astype(np.uint8), mode="L")
    return np.asarray(image.filter(ImageFilter.GaussianBlur(radius)), dtype=np.float32) / 255.0


def combine_masks(existing: np.ndarray | None, new: np.ndarray, mode: MaskMode, alpha: float) -> np.ndarray:
    import numpy as np

    if mode in (MaskMode.REPLACE, MaskMode.FILL):
        return new
    if existing is None:
        existing = np.ones_like(new) if mode is MaskMode.SUBTRACT else np.zeros_like(new)
    if mode is MaskMode.ADD:
        combined = existing + alpha * new
    elif mode is MaskMode.SUBTRACT:
        combined = existing - alpha * new
    else:
        combined = (1.0 - alpha) * existing + alpha * new
    return np.clip(combined, 0.0, 1.0)


def read_mask(path: Path, size: tuple[int, int]) -> np.ndarray | None:
    """The existing mask as 0..1 floats at the image's displayed `size`, or None when there is none."""
    import numpy as np

    if not path.is_file():
        return None
    return np.asarray(decode_mask(path, size), dtype=np.float32) / 255.0


def write_mask(path: Path, mask: np.ndarray) -> None:
    import numpy as np
    from PIL import Image

    image = Image.fromarray(np.round(np.clip(mask, 0.0, 1.0) * 255.0).astype(np.uint8), mode="L")
    with atomic_file(path) as handle:
        image.save(handle, format="PNG")


def _validate(request: MaskRequest) -> None:
    """Every argument, before the folder is read: a wrong one fails the same with or without images."""
    from onetrainer.dataset_tools.maskers import check_masker
    from onetrainer.util.devices import parse_dtype

    if not request.prompts:
        raise UserError("no prompt given", hint="Pass what to mask with --prompt (repeatable).")
    check_masker(request.model, request.prompts)
    parse_dtype(request.dtype)
    if not 0.0 <= request.alpha <= 1.0:
        raise UserError(f"--alpha must be between 0 and 1, got {request.alpha}")
    if request.threshold is not None and not 0.0 <= request.threshold <= 1.0:
        raise UserError(f"--threshold must be between 0 and 1, got {request.threshold}")
    if request.smooth < 0 or request.expand < 0:
        raise UserError("--smooth and --expand take a number of pixels, 0 or more")
    if request.batch_size < 1:
        raise UserError("--batch-size must be at least 1")


def mask_folder(request: MaskRequest, on_progress: ProgressCallback = no_progress) -> ToolSummary:
    """Mask every image under `request.directory` that the mode selects; returns what happened."""
    from onetrainer.dataset_tools.maskers import COLOR, open_masker
    from onetrainer.util.devices import resolve_device

    _validate(request)
    if request.model != COLOR:
        resolve_device(request.device)
    todo, summary = select_images(
        request.directory,
        recursive=request.recursive,
        wanted=lambda image: request.mode is not MaskMode.FILL or not mask_path(image).is_file(),
        sidecar=mask_path,
    )
    if not todo:
        return summary
    masker = open_masker(request)

    def write(image_path: Path, image: Image.Image, mask: np.ndarray) -> Path:
        target = mask_path(image_path)
        shaped = smooth_mask(expand_mask(mask, request.expand), request.smooth)
        existing = read_mask(target, image.size) if request.mode is not MaskMode.REPLACE else None
        write_mask(target, combine_masks(existing, shaped, request.mode, request.alpha))
        if not mask.any():  # (after the write: a mask that failed is reported as failed, not as empty)
            summary.empty.append(target)
        return target

    return run_batches(
        todo,
        batch_size=request.batch_size,
        process=masker.masks,
        write=write,
        summary=summary,
        on_progress=on_progress,
    )
