"""The per-sample graphs and how a planned use of a sample is keyed and run through them.

Two graphs: the image graph (decode, crop, augment) keyed by the image variation, and the text graph
(caption source and augmentation) keyed by the text variation. Which variation a use gets depends on
caching: a cached part has `image_variations` / `text_variations` fixed variants, used in turn across
passes (slot = pass % variations); an uncached part is augmented afresh for every pass and every
padding copy, so repeats of an image in one epoch always differ. Caption dropout is the exception: it is
drawn for every use either way (the cache holds the empty caption's encoding beside the others).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from onetrainer.data_loader.graph import Graph, Node, SampleContext
from onetrainer.data_loader.nodes_image import IMAGE_SOURCES, image_nodes
from onetrainer.data_loader.nodes_text import TEXT_SOURCES, text_nodes
from onetrainer.data_loader.plan import DataPlan, Draw
from onetrainer.data_loader.rng import keyed_random
from onetrainer.util.config.data import ConceptConfig, ConceptType

GEOMETRY_OUTPUTS = ("original_size", "crop_top_left")
"""The size conditioning of a sample's use, known from header sizes alone: the source size, and the crop
as the model sees it (flip included), so cached entries never need decoding again to say it."""


MASK_AUGMENTATIONS = ("mask_shrink", "mask_rotate_crop")
"""The `image.*` sections of the mask augmentations, which act only with masked training."""


def uses_mask_augmentation(concepts: Iterable[ConceptConfig], *, masked_training: bool) -> bool:
    """Whether the image graph needs the mask nodes: masked training is on and a used concept asks."""
    return masked_training and any(
        getattr(concept.image, name).enabled for concept in concepts if concept.enabled for name in MASK_AUGMENTATIONS
    )


def image_graph(extra: Sequence[Node] = (), *, mask_augmentation: bool = False) -> Graph:
    """The standard image graph; a family may append nodes that consume its outputs.

    With `mask_augmentation` (masked training, and a concept enabling one) the graph gains the
    `mask_shrink` and `mask_rotate_crop` nodes before the bucket's crop; without, it is unchanged.
    """
    return Graph("image", [*image_nodes(mask_augmentation=mask_augmentation), *extra], IMAGE_SOURCES, ConceptConfig)


def text_graph(extra: Sequence[Node] = ()) -> Graph:
    return Graph("text", [*text_nodes(), *extra], TEXT_SOURCES, ConceptConfig)


class SamplePipeline:
    """Runs a draw through the graphs with the right keys; shared read-only by all worker threads."""

    def __init__(
        self,
        plan: DataPlan,
        *,
        image_cached: bool,
        text_cached: bool,
        images: Graph | None = None,
        texts: Graph | None = None,
        mask_augmentation: bool = False,
    ) -> None:
        self.plan = plan
        self.image_cached = image_cached
        self.text_cached = text_cached
        self.mask_augmentation = mask_augmentation
        self.images = images or image_graph(mask_augmentation=mask_augmentation)
        self.texts = texts or text_graph()
        self._memo: dict[tuple[object, ...], Any] = {}

    def image_variation(self, draw: Draw) -> tuple[int, int]:
        """(variation, copy) keying the image nodes."""
        return (draw.slot, 0) if self.image_cached else (draw.pass_index, draw.copy)

    def text_variation(self, draw: Draw) -> tuple[int, int]:
        if self.text_cached:
            concept = self.plan.concepts[self.plan.samples[draw.sample].concept]
            return draw.pass_index % concept.text_variations, 0
        return draw.pass_index, draw.copy

    def image_settings(self, concept: ConceptConfig) -> dict[str, Any]:
        """The concept's image settings that shape a cached image entry (part of its key).

        A mask augmentation that does not run (off, or no masked training) is left out, so adding
        these settings, or turning them off again, keeps every existing cache entry valid.
        """
        inactive = {
            name for name in MASK_AUGMENTATIONS if not (self.mask_augmentation and getattr(concept.image, name).enabled)
        }
        return concept.image.model_dump(mode="json", exclude=inactive)

    def _context(self, draw: Draw, kind: str, variation: tuple[int, int]) -> SampleContext:
        sample = self.plan.samples[draw.sample]
        concept = self.plan.concepts[sample.concept]
        return SampleContext(sample, concept, (self.plan.seed, concept.seed, kind, *variation, sample.id))

    def image(self, draw: Draw, wanted: Iterable[str] = ("pixels", "mask", *GEOMETRY_OUTPUTS)) -> dict[str, Any]:
        sample = self.plan.samples[draw.sample]
        sources = {
            "image_path": sample.path,
            "mask_path": sample.mask_path,
            "source_size": (sample.height, sample.width),
            "target_size": draw.bucket,
        }
        context = self._context(draw, "image", self.image_variation(draw))
        return self.images.run(context, sources, wanted)

    def geometry(self, draw: Draw) -> dict[str, Any]:
        """Original size and crop offset (mirrored with the image when it is flipped), from the header
        size alone (no decoding).

        With a cache the result repeats every time the slot is used, so it is remembered (the
        materialise layer then only reads entries); without one every use has its own key.
        """
        key = ("geometry", draw.sample, draw.bucket, *self.image_variation(draw))
        result = self._memo.get(key) if self.image_cached else None
        if result is None:
            result = self.image(draw, GEOMETRY_OUTPUTS)
            if self.image_cached:
                self._memo[key] = result
        return dict(result)

    def caption(self, draw: Draw) -> str:
        """The caption of this use: its text variation's, or empty where caption dropout drops it."""
        return "" if self.drops_caption(draw) else self._variation_caption(draw)

    def cached_captions(self, draw: Draw) -> list[str]:
        """The captions a text cache needs for this draw's variation: its caption, and the empty one where
        the concept drops captions."""
        caption = self._variation_caption(draw)
        return [caption, ""] if self._dropout_rate(draw) and caption else [caption]

    def drops_caption(self, draw: Draw) -> bool:
        """Caption dropout, drawn afresh for every use of a sample (pass and padding copy), cached or not: drawn
        with the cached variation instead, it would leave the same images uncaptioned in every epoch."""
        rate = self._dropout_rate(draw)
        if not rate:
            return False
        sample = self.plan.samples[draw.sample]
        concept = self.plan.concepts[sample.concept]
        use = (self.plan.seed, concept.seed, "caption_dropout", draw.pass_index, draw.copy, sample.id)
        return keyed_random(*use).random() < rate

    def _dropout_rate(self, draw: Draw) -> float:
        """The concept's caption dropout; none for validation samples, whose loss compares runs."""
        concept = self.plan.concepts[self.plan.samples[draw.sample].concept]
        return 0.0 if concept.type is ConceptType.VALIDATION else float(concept.caption.caption_dropout)

    def _variation_caption(self, draw: Draw) -> str:
        key = ("caption", draw.sample, *self.text_variation(draw))
        caption = self._memo.get(key) if self.text_cached else None
        if caption is None:
            sample = self.plan.samples[draw.sample]
            sources = {"image_path": sample.path, "caption_path": sample.caption_path}
            context = self._context(draw, "text", self.text_variation(draw))
            caption = str(self.texts.run(context, sources, ("caption",))["caption"])
            if self.text_cached:
                self._memo[key] = caption
        return caption

    def describe(self) -> str:
        return f"{self.images.describe()}\n{self.texts.describe()}"
