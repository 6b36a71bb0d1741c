"""The dataset report: what `train --dry-run` and `inspect` show before anything trains.

Per concept: images found, used and skipped (each with its path and reason), captions missing, masks
found, samples per epoch; then the bucket histogram and the exact steps per epoch. It is plain data
with three faces: `to_dict()` for `--json`, `to_text()` for logs and tests, and `__rich__` for the
terminal. `require_trainable()` raises the exit-2 error when nothing would train, with the reasons
counted.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from onetrainer.data_loader.buckets import format_bucket
from onetrainer.data_loader.plan import DataPlan
from onetrainer.data_loader.scan import ConceptScan, Skipped
from onetrainer.util.config.data import ConceptType
from onetrainer.util.errors import UserError

if TYPE_CHECKING:
    from rich.console import RenderableType


@dataclass
class ConceptSummary:
    name: str
    path: str
    type: str
    enabled: bool
    found: int
    used: int
    skipped: list[dict[str, str]]
    captions_missing: int
    masks_found: int
    samples_per_epoch: int
    notes: list[str] = field(default_factory=list)


@dataclass
class DatasetReport:
    concepts: list[ConceptSummary]
    buckets: dict[str, int]
    """Training uses per bucket (`WxH`) in epoch 0."""
    small_buckets: list[str]
    """Buckets holding fewer uses than one global batch: their batch is padded with repeats."""
    samples_per_epoch: int
    padded_uses: int
    """Uses added to complete each bucket's last batch (repeats of that bucket's images)."""
    steps_per_epoch: int
    steps_vary_by_epoch: bool
    batch_size: int
    world_size: int
    validation_samples: int

    @property
    def skipped(self) -> list[dict[str, str]]:
        return [item for concept in self.concepts for item in concept.skipped]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def reasons_nothing_trains(self) -> list[str]:
        """Why no training batch would be produced; empty when training can start."""
        if self.steps_per_epoch > 0:
            return []
        if not self.concepts:
            return ["no concepts are configured (data.concepts is empty)"]
        reasons: list[str] = []
        disabled = sum(not concept.enabled for concept in self.concepts)
        if disabled:
            reasons.append(f"{disabled} concept(s) disabled")
        validation = [c for c in self.concepts if c.enabled and c.type == ConceptType.VALIDATION.value]
        if validation:
            reasons.append(f"{len(validation)} concept(s) of type validation (never trained)")
        reasons += [
            f"concept '{concept.name}' (data.concepts.{index}) holds no images: {concept.path}"
            for index, concept in enumerate(self.concepts)
            if concept.enabled and concept.found == 0
        ]
        counts = Counter(item["reason"].split(":")[0].split(" (")[0] for item in self.skipped)
        reasons += [f"{count} image(s) skipped: {reason}" for reason, count in counts.most_common()]
        return reasons

    def require_trainable(self) -> None:
        reasons = self.reasons_nothing_trains()
        if not reasons:
            return
        if self.concepts:
            hint = "Add images to a concept folder, enable a concept, or fix the skipped files listed above."
        else:
            hint = (
                "Add a folder of your images (captions in name.txt beside each image): on the command line "
                "`data.concepts.0.path=~/datasets/my-cat`, or in the file a `concepts:` list under `data:` "
                "with `- path: ~/datasets/my-cat`."
            )
        raise UserError("nothing would train:\n" + "\n".join(f"  - {reason}" for reason in reasons), hint=hint)

    def to_text(self) -> str:
        lines: list[str] = []
        for concept in self.concepts:
            state = "" if concept.enabled else " (disabled)"
            lines.append(f"concept {concept.name} [{concept.type}]{state}: {concept.path}")
            if not concept.enabled:
                continue
            lines.append(
                f"  images found {concept.found}, used {concept.used}, skipped {len(concept.skipped)}; "
                f"captions missing {concept.captions_missing}; masks found {concept.masks_found}; "
                f"samples per epoch {concept.samples_per_epoch}"
            )
            lines += [f"  skipped {item['path']}: {item['reason']}" for item in concept.skipped]
            lines += [f"  note: {note}" for note in concept.notes]
        histogram = ", ".join(f"{bucket}: {count}" for bucket, count in self.buckets.items()) or "none"
        lines.append(f"buckets {histogram}")
        if self.small_buckets:
            lines.append(f"buckets smaller than a batch (padded with repeats): {', '.join(self.small_buckets)}")
        if self.padded_uses:
            lines.append(f"{self.padded_uses} use(s) repeat images to complete each bucket's last batch")
        vary = " (epoch 0; varies by epoch)" if self.steps_vary_by_epoch else ""
        lines.append(
            f"samples per epoch {self.samples_per_epoch}, batch size {self.batch_size} x {self.world_size} rank(s), "
            f"steps per epoch {self.steps_per_epoch}{vary}; validation samples {self.validation_samples}"
        )
        return "\n".join(lines)

    def __rich__(self) -> RenderableType:
        from rich.console import Group
        from rich.table import Table

        concepts = Table(title="Concepts", title_justify="left")
        for column in ("concept", "type", "found", "used", "skipped", "no caption", "masks", "per epoch"):
            concepts.add_column(column, justify="left" if column in ("concept", "type") else "right")
        for c in self.concepts:
            type_text = c.type if c.enabled else f"{c.type} (disabled)"
            row = [c.found, c.used, len(c.skipped), c.captions_missing, c.masks_found, c.samples_per_epoch]
            concepts.add_row(c.name, type_text, *(str(value) for value in row))
        buckets = Table(title="Buckets (epoch 0)", title_justify="left")
        buckets.add_column("resolution")
        buckets.add_column("samples", justify="right")
        for bucket, count in self.buckets.items():
            marker = " (padded)" if bucket in self.small_buckets else ""
            buckets.add_row(bucket + marker, str(count))
        parts: list[RenderableType] = [concepts]
        skipped = [f"[yellow]skipped[/] {item['path']}: {item['reason']}" for item in self.skipped]
        notes = [f"note: {note}" for concept in self.concepts for note in concept.notes]
        parts += [*skipped, *notes, buckets]
        vary = " (epoch 0; varies by epoch)" if self.steps_vary_by_epoch else ""
        parts.append(
            f"samples per epoch [bold]{self.samples_per_epoch}[/], steps per epoch [bold]{self.steps_per_epoch}[/]"
            f"{vary}, batch {self.batch_size} x {self.world_size} rank(s), validation samples {self.validation_samples}"
        )
        return Group(*parts)


def _skipped(items: list[Skipped]) -> list[dict[str, str]]:
    return [{"path": str(item.path), "reason": item.reason} for item in items]


def build_report(scans: list[ConceptScan], plan: DataPlan) -> DatasetReport:
    concepts = [
        ConceptSummary(
            name=scan.label,
            path=str(scan.config.path),
            type=scan.config.type.value,
            enabled=scan.config.enabled,
            found=scan.found,
            used=len(scan.samples),
            skipped=_skipped(scan.skipped),
            captions_missing=scan.captions_missing,
            masks_found=scan.masks_found,
            samples_per_epoch=plan.concept_samples_per_epoch(scan.index),
            notes=list(scan.notes),
        )
        for scan in scans
    ]
    counts = plan.bucket_counts(0)
    ordered = sorted(counts, key=lambda bucket: (-counts[bucket], bucket))
    return DatasetReport(
        concepts=concepts,
        buckets={format_bucket(bucket): counts[bucket] for bucket in ordered},
        small_buckets=[format_bucket(b) for b in ordered if counts[b] < plan.global_batch],
        samples_per_epoch=sum(counts.values()),
        steps_per_epoch=plan.steps_in_epoch(0),
        steps_vary_by_epoch=not plan.epochs_are_alike,
        batch_size=plan.batch_size,
        world_size=plan.world_size,
        padded_uses=sum(-count % plan.global_batch for count in counts.values()),
        validation_samples=sum(len(scan.samples) for scan in scans if scan.config.type is ConceptType.VALIDATION),
    )
