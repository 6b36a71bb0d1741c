"""Concept folders to samples: list files, read sizes from headers, find sidecars, skip the unusable.

Nothing is dropped silently: every file that will not train is a `Skipped` with its path and reason,
so the dataset report can list it and the loader can warn about it. Header reads and decode checks
run in a thread pool and are remembered per file (see `memo`), so a second scan of a large folder
costs only a `stat` per file.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from onetrainer.data_loader.events import LoaderEvent, ProgressCallback, ignore_events
from onetrainer.data_loader.files import (
    MASK_SUFFIX,
    ImageHeader,
    ImageReadFailed,
    ImageTooLarge,
    UnreadableImage,
    caption_path_for,
    check_link,
    check_pixel_limit,
    limit_pixels,
    list_images,
    mask_path_for,
    pixel_limit,
    read_header,
    read_text_lines,
    sidecar_sharers,
    verify_image,
)
from onetrainer.data_loader.memo import FileMemo
from onetrainer.util.config.data import CaptionSource, ConceptConfig, DataConfig, MissingCaption
from onetrainer.util.errors import ConfigError, ConfigProblem


@dataclass(frozen=True)
class Sample:
    """One training image and its sidecars; `id` is stable across runs and machines' worker counts."""

    id: str
    concept: int
    path: Path
    height: int
    width: int
    mask_path: Path | None
    caption_path: Path | None


@dataclass(frozen=True)
class Skipped:
    path: Path
    reason: str


@dataclass
class ConceptScan:
    index: int
    label: str
    config: ConceptConfig
    found: int = 0
    samples: list[Sample] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    captions_missing: int = 0
    masks_found: int = 0
    notes: list[str] = field(default_factory=list)


def concept_labels(concepts: list[ConceptConfig]) -> list[str]:
    """A name per concept for ids and reports: its `name`, else its folder name, made unique."""
    labels: list[str] = []
    for index, concept in enumerate(concepts):
        label = concept.name or concept.path.name or str(concept.path)
        labels.append(f"{label}#{index}" if label in labels else label)
    return labels


SKIP_KEY = "skip"
"""A file's memo entry for why it cannot train: {"reason": ..., "pixel_limit": ...} (see `_remember_skip`)."""

LEGACY_KEYS = ("error",)
"""What older versions remembered a skip under, a too-large or failed read included, for good: such a file
is read again once and remembered anew."""


def _header(path: Path, memo: FileMemo, verify: bool) -> ImageHeader | Skipped:
    """The file's header, or why it cannot train; the memo answers where what it knows still holds."""
    try:
        check_link(path)
        record = memo.record(path)
    except UnreadableImage as exc:
        return Skipped(path, exc.reason)
    except OSError as exc:
        return Skipped(path, f"unreadable: {exc}")
    known = _known_skip(record)
    if known is not None:
        return Skipped(path, known)
    try:
        header = _checked_header(path, record, memo, verify)
    except UnreadableImage as exc:
        _remember_skip(memo, path, exc)
        return Skipped(path, exc.reason)
    stale = [name for name in (SKIP_KEY, *LEGACY_KEYS) if name in record]
    if stale:
        memo.forget(path, *stale)
    return header


def _checked_header(path: Path, record: dict[str, Any], memo: FileMemo, verify: bool) -> ImageHeader:
    """The header (read once), held against the pixel limit in force (a remembered size skips the open
    that refuses it), and the file decoded once when `verify` asks."""
    if "header" not in record:
        header = read_header(path)
        memo.update(path, header=[header.height, header.width, header.frames])
    height, width, frames = memo.record(path)["header"]
    header = ImageHeader(height=height, width=width, frames=frames)
    check_pixel_limit(path, header)
    if verify and not record.get("verified"):
        verify_image(path)
        memo.update(path, verified=True)
    return header


def _known_skip(record: dict[str, Any]) -> str | None:
    """The remembered reason a file cannot train, if it still holds under the settings in force."""
    skip = record.get(SKIP_KEY)
    if not isinstance(skip, dict):
        return None
    if "pixel_limit" in skip and skip["pixel_limit"] != pixel_limit():
        return None
    return str(skip["reason"])


def _remember_skip(memo: FileMemo, path: Path, exc: UnreadableImage) -> None:
    """Remember what holds while the file is unchanged: a failed read may pass next time, so it is not
    remembered, and "too large" holds only under the pixel limit it was found with, so that is kept."""
    if isinstance(exc, ImageReadFailed):
        return
    skip: dict[str, Any] = {"reason": exc.reason}
    if isinstance(exc, ImageTooLarge):
        skip["pixel_limit"] = exc.limit
    memo.update(path, **{SKIP_KEY: skip})


def _check_concept_file(scan: ConceptScan, problems: list[ConfigProblem]) -> None:
    caption = scan.config.caption
    if caption.source is not CaptionSource.CONCEPT_FILE or caption.concept_file is None:
        return
    lines, replaced = read_text_lines(caption.concept_file)
    if replaced:
        scan.notes.append(f"caption file is not valid UTF-8 (bad bytes replaced): {caption.concept_file}")
    if not lines:
        problems.append(ConfigProblem(f"data.concepts.{scan.index}.caption.concept_file", "the file has no captions"))


def _classify(
    scan: ConceptScan, path: Path, header: ImageHeader | Skipped, root: Path, memo: FileMemo, verify: bool
) -> None:
    config = scan.config
    if isinstance(header, Skipped):
        scan.skipped.append(header)
        return
    if min(header.height, header.width) < config.image.min_side:
        minimum = config.image.min_side
        reason = f"too small: {header.width}x{header.height} (shorter side below image.min_side={minimum})"
        scan.skipped.append(Skipped(path, reason))
        return
    caption_path = caption_path_for(path)
    if config.caption.source is CaptionSource.SIDECAR:
        lines: list[str] = []
        if caption_path is not None:
            lines, replaced = read_text_lines(caption_path)
            if replaced:
                scan.notes.append(f"caption is not valid UTF-8 (bad bytes replaced): {caption_path}")
        if not lines:
            scan.captions_missing += 1
            if config.caption.if_missing is MissingCaption.SKIP:
                scan.skipped.append(Skipped(path, "no caption (caption.if_missing is skip)"))
                return
    if header.frames > 1:
        scan.notes.append(f"animated ({header.frames} frames), first frame used: {path}")
    mask_path = mask_path_for(path)
    if mask_path is not None and verify:
        mask = _header(mask_path, memo, verify)
        if isinstance(mask, Skipped):
            scan.skipped.append(Skipped(path, f"its mask {mask_path.name} is {mask.reason}"))
            return
    scan.masks_found += mask_path is not None
    sample_id = f"{scan.label}/{path.relative_to(root).as_posix()}"
    scan.samples.append(Sample(sample_id, scan.index, path, header.height, header.width, mask_path, caption_path))


def scan_concepts(
    data: DataConfig,
    *,
    memo: FileMemo,
    workers: int = 0,
    progress: ProgressCallback = ignore_events,
) -> list[ConceptScan]:
    """Scan every concept (disabled ones only by name). Raises `ConfigError` for missing folders."""
    limit_pixels(data.max_image_pixels)
    labels = concept_labels(data.concepts)
    scans = [ConceptScan(index, labels[index], concept) for index, concept in enumerate(data.concepts)]
    problems: list[ConfigProblem] = []
    jobs: list[tuple[ConceptScan, Path]] = []
    for scan in scans:
        if not scan.config.enabled:
            continue
        if not scan.config.path.is_dir():
            problems.append(ConfigProblem(f"data.concepts.{scan.index}.path", f"folder not found: {scan.config.path}"))
            continue
        _check_concept_file(scan, problems)
        images = list_images(scan.config.path, recursive=scan.config.include_subdirectories)
        scan.found = len(images)
        jobs.extend((scan, path) for path in images)
        if not images:
            message = f"concept '{scan.label}' (data.concepts.{scan.index}) holds no images: {scan.config.path}"
            progress(LoaderEvent("warning", "scan", message=message))
        for group in sidecar_sharers(images):
            message = _sharing_note(group)
            scan.notes.append(message)
            progress(LoaderEvent("warning", "scan", message=message))
    if problems:
        raise ConfigError(problems, hint="Each concept path must be an existing folder of images.")

    with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="scan") as pool:
        headers = _headers([path for _, path in jobs], memo, data.verify_images, pool if workers > 0 else None)
        for done, ((scan, path), header) in enumerate(zip(jobs, headers, strict=True), 1):
            skipped_before = len(scan.skipped)
            _classify(scan, path, header, scan.config.path, memo, data.verify_images)
            for item in scan.skipped[skipped_before:]:
                progress(LoaderEvent("warning", "scan", done, len(jobs), f"skipped {item.path}: {item.reason}"))
            progress(LoaderEvent("progress", "scan", done, len(jobs)))
    return scans


def _sharing_note(group: list[Path]) -> str:
    stem = group[0].with_suffix("")
    return (
        f"{', '.join(str(path) for path in group)} share one caption file and one mask ({stem.name}.txt, "
        f"{stem.name}{MASK_SUFFIX}), which each of them trains with: rename all but one"
    )


def _headers(
    paths: list[Path], memo: FileMemo, verify: bool, pool: ThreadPoolExecutor | None
) -> Iterator[ImageHeader | Skipped]:
    """Headers in input order; with a pool they are read concurrently (Pillow releases the GIL)."""
    if pool is None:
        return (_header(path, memo, verify) for path in paths)
    return pool.map(lambda path: _header(path, memo, verify), paths)
