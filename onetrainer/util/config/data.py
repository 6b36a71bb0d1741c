"""Config section for the training data: concepts (image folders) and how they become batches.

Every per-concept setting the data loader reads lives here, so a misspelled key is a config error with
a suggestion before anything loads, and the loader's graph checks its setting names against this
schema at build time (mgds silently turned a misspelled flag into "feature off").
"""

from __future__ import annotations

import re
from enum import Enum

from pydantic import Field, field_validator, model_validator

from onetrainer.util.config.base import Section
from onetrainer.util.config.types import ExistingDir, ExistingPath, OutputPath

MIN_RESOLUTION = 64
MAX_RESOLUTION = 8192
PILLOW_PIXEL_LIMIT = 2 * (1024 * 1024 * 1024 // 4 // 3)
"""Where Pillow refuses an image by default (twice its `MAX_IMAGE_PIXELS`, above which it only warns)."""


class ConceptType(str, Enum):
    STANDARD = "standard"
    VALIDATION = "validation"
    PRIOR = "prior"


class CaptionSource(str, Enum):
    SIDECAR = "sidecar"
    FILENAME = "filename"
    CONCEPT_FILE = "concept_file"
    FIXED = "fixed"


class MissingCaption(str, Enum):
    EMPTY = "empty"
    FILENAME = "filename"
    SKIP = "skip"


class AlphaMode(str, Enum):
    FLATTEN = "flatten"
    MASK = "mask"


class CaptionConfig(Section):
    source: CaptionSource = Field(
        CaptionSource.SIDECAR,
        description="Where captions come from: sidecar (name.txt), filename, concept_file or fixed.",
    )
    if_missing: MissingCaption = Field(
        MissingCaption.EMPTY,
        description="With source sidecar, an image without name.txt: empty caption, its filename, or skip it.",
    )
    concept_file: ExistingPath | None = Field(
        None, description="With source concept_file: a text file of captions, one per line, one picked per use."
    )
    text: str = Field("", description="With source fixed: the caption of every image.")
    prefix: str = Field(
        "",
        description="Text put before every caption line, as typed (e.g. 'a photo of <my-concept>, '); with "
        "keep_tags, count its tags among the kept ones.",
    )
    tag_delimiter: str = Field(",", min_length=1, description="What separates tags in a caption.")
    keep_tags: int = Field(0, ge=0, description="Leading tags that shuffling and tag dropout never touch.")
    shuffle_tags: bool = Field(False, description="Shuffle the tags after the first keep_tags.")
    tag_dropout: float = Field(0.0, ge=0, le=1, description="Probability of dropping each droppable tag.")
    tag_dropout_keep: list[str] = Field(
        default_factory=list, description="Tags that tag dropout never drops (a keep-list)."
    )
    tag_dropout_only: list[str] = Field(
        default_factory=list, description="If set, tag dropout drops only these tags (a drop-list)."
    )
    tag_dropout_regex: bool = Field(
        False, description="Read tag_dropout_keep / tag_dropout_only as regular expressions (full match)."
    )
    caption_dropout: float = Field(
        0.0, ge=0, le=1, description="Probability of training an image with an empty caption."
    )
    random_capitalization: float = Field(
        0.0, ge=0, le=1, description="Probability of rewriting a caption as lower, UPPER, Title or First case."
    )

    @model_validator(mode="after")
    def _check_source(self) -> CaptionConfig:
        if self.source is CaptionSource.CONCEPT_FILE and self.concept_file is None:
            raise ValueError("caption.source concept_file needs caption.concept_file (a text file of captions)")
        if self.source is CaptionSource.FIXED and not self.text.strip():
            raise ValueError("caption.source fixed needs caption.text")
        if self.tag_dropout_regex:
            for pattern in [*self.tag_dropout_keep, *self.tag_dropout_only]:
                try:
                    re.compile(pattern)
                except re.error as exc:
                    raise ValueError(f"invalid regular expression {pattern!r}: {exc}") from None
        return self


class MaskShrinkConfig(Section):
    """Random circular mask shrink: keep a random disc of the mask, so the loss does not trace its outline."""

    enabled: bool = Field(
        False, description="With masked training, keep only a random disc of each mask (the rest becomes 0)."
    )
    probability: float = Field(1.0, ge=0, le=1, description="Chance of shrinking a mask each time it is used.")
    min_radius: float = Field(
        0.2,
        gt=0,
        le=1,
        description="Smallest disc radius, as a fraction of the distance from its centre to the farthest mask pixel.",
    )
    max_radius: float = Field(1.0, gt=0, le=1, description="Largest disc radius, same unit (1 keeps the whole mask).")

    @model_validator(mode="after")
    def _check_radii(self) -> MaskShrinkConfig:
        if self.min_radius > self.max_radius:
            raise ValueError(f"min_radius ({self.min_radius}) must not be above max_radius ({self.max_radius})")
        return self


class MaskRotateCropConfig(Section):
    """Mask-centred random rotate-crop: zoom in on the masked subject before the bucket's scale and crop."""

    enabled: bool = Field(
        False,
        description="With masked training, crop around the mask (random padding and rotation) before bucketing.",
    )
    probability: float = Field(1.0, ge=0, le=1, description="Chance of cropping each time an image is used.")
    min_padding: float = Field(
        0.1, ge=0, le=2, description="Smallest margin around the mask's bounding box, as a fraction of its size."
    )
    max_padding: float = Field(0.3, ge=0, le=2, description="Largest margin around the mask's bounding box.")
    min_size: float = Field(
        0.5, gt=0, le=1, description="Smallest crop, as a fraction of the image's sides (keeps context and detail)."
    )
    rotation: float = Field(20.0, ge=0, le=180, description="Largest random rotation of the crop, in degrees.")

    @model_validator(mode="after")
    def _check_padding(self) -> MaskRotateCropConfig:
        if self.min_padding > self.max_padding:
            raise ValueError(f"min_padding ({self.min_padding}) must not be above max_padding ({self.max_padding})")
        return self


class ImageConfig(Section):
    crop_jitter: float = Field(
        1.0, ge=0, le=1, description="How far the crop may move off centre (0 = always centred, 1 = anywhere)."
    )
    flip: float = Field(0.0, ge=0, le=1, description="Probability of a horizontal flip.")
    rotation: float = Field(0.0, ge=0, le=180, description="Largest random rotation, in degrees.")
    brightness: float = Field(0.0, ge=0, le=1, description="Largest random brightness change (0.2 = ±20 %).")
    contrast: float = Field(0.0, ge=0, le=1, description="Largest random contrast change (0.2 = ±20 %).")
    saturation: float = Field(0.0, ge=0, le=1, description="Largest random saturation change (0.2 = ±20 %).")
    hue: float = Field(0.0, ge=0, le=0.5, description="Largest random hue shift, as a fraction of a full turn.")
    alpha: AlphaMode = Field(
        AlphaMode.FLATTEN,
        description="Transparent images: flatten onto alpha_background, or also use the alpha as the mask.",
    )
    alpha_background: list[int] = Field(
        default_factory=lambda: [255, 255, 255],
        min_length=3,
        max_length=3,
        description="RGB colour (0-255) that transparent pixels are flattened onto.",
    )
    min_side: int = Field(16, ge=1, description="Images whose shorter side is below this are skipped as too small.")
    mask_shrink: MaskShrinkConfig = Field(
        default_factory=MaskShrinkConfig, description="Random circular mask shrink (masked training only)."
    )
    mask_rotate_crop: MaskRotateCropConfig = Field(
        default_factory=MaskRotateCropConfig, description="Mask-centred random rotate-crop (masked training only)."
    )

    @field_validator("alpha_background")
    @classmethod
    def _check_colour(cls, value: list[int]) -> list[int]:
        if any(not 0 <= channel <= 255 for channel in value):
            raise ValueError("each channel must be between 0 and 255")
        return value


Resolution = int | list[int]


def _check_resolution(value: Resolution) -> Resolution:
    values = value if isinstance(value, list) else [value]
    if not values:
        raise ValueError("give at least one resolution")
    for item in values:
        if not MIN_RESOLUTION <= item <= MAX_RESOLUTION:
            raise ValueError(f"each resolution must be between {MIN_RESOLUTION} and {MAX_RESOLUTION}, got {item}")
    if len(set(values)) != len(values):
        raise ValueError("resolutions must not repeat")
    return value


class ConceptConfig(Section):
    path: ExistingDir = Field(description="Folder of images (with name.txt captions beside them).")
    name: str | None = Field(None, description="Name shown in reports (default: the folder name).")
    enabled: bool = Field(True, description="Set false to keep the concept in the config but not train on it.")
    include_subdirectories: bool = Field(False, description="Also use images in sub-folders.")
    type: ConceptType = Field(
        ConceptType.STANDARD,
        description="standard, validation (only for validation loss) or prior (target = the un-adapted model).",
    )
    repeats: float = Field(1.0, gt=0, description="How many times per epoch each image is used (0.5 = half).")
    samples: int | None = Field(
        None, ge=1, description="A fixed number of samples per epoch instead of repeats (rotating through images)."
    )
    loss_weight: float = Field(1.0, ge=0, description="Multiplies this concept's loss.")
    seed: int = Field(0, ge=0, description="Mixed into the run seed for this concept's random choices.")
    resolution: Resolution | None = Field(
        None, description="Override data.resolution for this concept (an int, or a list for multi-resolution)."
    )
    image_variations: int = Field(
        1, ge=1, le=1000, description="Augmented variants of each image cached (used in turn across repeats)."
    )
    text_variations: int = Field(
        1, ge=1, le=1000, description="Augmented captions of each image cached (used in turn across repeats)."
    )
    caption: CaptionConfig = Field(default_factory=CaptionConfig, description="Caption source and text augmentation.")
    image: ImageConfig = Field(default_factory=ImageConfig, description="Image handling and augmentation.")

    @field_validator("resolution")
    @classmethod
    def _resolution(cls, value: Resolution | None) -> Resolution | None:
        return None if value is None else _check_resolution(value)

    @model_validator(mode="after")
    def _check_repeats_or_samples(self) -> ConceptConfig:
        if self.samples is not None and "repeats" in self.model_fields_set and self.repeats != 1.0:
            raise ValueError("set either repeats or samples, not both")
        return self


class DataConfig(Section):
    resolution: Resolution = Field(
        512,
        description="Target side length; buckets keep its pixel count. A list trains at several (one per sample).",
    )
    concepts: list[ConceptConfig] = Field(default_factory=list, description="The image folders to train on.")
    bucketing: bool = Field(True, description="Aspect-ratio buckets; false crops every image square.")
    cache: bool = Field(True, description="Cache encoder outputs (latents, text) on disk between runs.")
    cache_dir: OutputPath | None = Field(None, description="Cache folder (default: <workspace>/cache).")
    clear_cache: bool = Field(False, description="Delete the whole cache before this run (it is kept by default).")
    verify_images: bool = Field(
        True, description="Check new or changed images decode, so broken files are skipped up front."
    )
    max_image_pixels: int | None = Field(
        PILLOW_PIXEL_LIMIT,
        ge=1,
        description="Images with more pixels are skipped as possible decompression bombs (default: where Pillow "
        "refuses); null: no limit.",
    )
    strict: bool = Field(False, description="Treat an unreadable or skipped image as an error instead of a warning.")
    workers: int = Field(2, ge=0, le=64, description="CPU worker threads preparing batches (0 = in the main thread).")
    prefetch: int = Field(
        8, ge=1, le=256, description="Batches prepared ahead of the training step (at least 16 from the cache)."
    )
    encode_batch_size: int = Field(8, ge=1, description="Images per encoder call while filling the cache.")

    @field_validator("resolution")
    @classmethod
    def _resolution(cls, value: Resolution) -> Resolution:
        return _check_resolution(value)
