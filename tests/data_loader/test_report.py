"""The dataset report behind `train --dry-run` and `inspect`: counts, reasons, buckets, steps."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from rich.console import Console

from onetrainer.data_loader import dataset_report
from onetrainer.util.errors import UserError


def test_report_counts_the_odd_dataset(make_config, odd_image_dataset_dir: Path) -> None:
    config = make_config(concepts=[{"path": odd_image_dataset_dir, "repeats": 2, "name": "odd"}])
    report = dataset_report(config)
    (concept,) = report.concepts
    assert (concept.found, concept.used, len(concept.skipped)) == (18, 15, 3)
    assert concept.masks_found == 5
    assert concept.samples_per_epoch == 30
    assert report.samples_per_epoch == 30 == sum(report.buckets.values())
    assert report.steps_per_epoch == sum(-(-count // 2) for count in report.buckets.values())
    assert report.reasons_nothing_trains() == []
    report.require_trainable()


def test_report_faces_agree(make_config, image_dataset_dir: Path) -> None:
    report = dataset_report(make_config(concepts=[{"path": image_dataset_dir, "name": "cats"}]))
    data = json.loads(json.dumps(report.to_dict()))
    assert data["concepts"][0]["name"] == "cats"
    assert data["steps_per_epoch"] == report.steps_per_epoch
    text = report.to_text()
    assert "concept cats [standard]" in text
    assert f"steps per epoch {report.steps_per_epoch}" in text
    console = Console(record=True, width=120)
    console.print(report)
    rendered = console.export_text()
    assert "cats" in rendered
    assert "Buckets" in rendered


def test_report_lists_skipped_files_with_reasons(make_config, odd_image_dataset_dir: Path) -> None:
    text = dataset_report(make_config(concepts=[{"path": odd_image_dataset_dir}])).to_text()
    assert f"skipped {odd_image_dataset_dir / 'odd-empty.png'}: empty file (0 bytes)" in text
    assert "odd-strip-1x4000.png: too small" in text


def test_small_buckets_are_reported(make_config, image_dataset_dir: Path) -> None:
    report = dataset_report(make_config(concepts=[{"path": image_dataset_dir}], training={"batch_size": 4}))
    assert report.small_buckets
    assert all(report.buckets[bucket] < 4 for bucket in report.small_buckets)
    assert report.padded_uses == sum(-count % 4 for count in report.buckets.values())


def test_dry_run_writes_nothing(make_config, image_dataset_dir: Path, tmp_path: Path) -> None:
    config = make_config(concepts=[{"path": image_dataset_dir}])
    dataset_report(config)
    assert not (tmp_path / "workspace").exists()


def test_nothing_to_train_says_why(make_config, tmp_path: Path, image_dataset_dir: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    small = tmp_path / "small"
    small.mkdir()
    shutil.copy(image_dataset_dir / "img-000.png", small / "a.png")
    concepts = [
        {"path": empty},
        {"path": image_dataset_dir, "enabled": False},
        {"path": image_dataset_dir, "type": "validation"},
        {"path": small, "image": {"min_side": 1000}},
    ]
    report = dataset_report(make_config(concepts=concepts))
    assert report.reasons_nothing_trains() == [
        "1 concept(s) disabled",
        "1 concept(s) of type validation (never trained)",
        f"concept 'empty' (data.concepts.0) holds no images: {empty}",
        "1 image(s) skipped: too small",
    ]
    with pytest.raises(UserError, match="nothing would train") as info:
        report.require_trainable()
    assert info.value.exit_code == 2


def test_no_concepts_at_all(make_config) -> None:
    assert dataset_report(make_config(concepts=[])).reasons_nothing_trains() == [
        "no concepts are configured (data.concepts is empty)"
    ]
