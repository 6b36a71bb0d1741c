"""The `data` config section: defaults, validators and the errors users see."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from onetrainer.util.config.data import (
    AlphaMode,
    CaptionSource,
    ConceptConfig,
    ConceptType,
    DataConfig,
    MissingCaption,
)
from onetrainer.util.config.loader import load_config
from onetrainer.util.errors import ConfigError


def test_concept_defaults(tmp_path: Path) -> None:
    concept = ConceptConfig(path=tmp_path)
    assert (concept.enabled, concept.repeats, concept.samples, concept.type) == (True, 1.0, None, ConceptType.STANDARD)
    assert concept.caption.source is CaptionSource.SIDECAR
    assert concept.caption.if_missing is MissingCaption.EMPTY
    assert concept.image.alpha is AlphaMode.FLATTEN
    assert (concept.image_variations, concept.text_variations, concept.resolution) == (1, 1, None)


def test_data_defaults_keep_resolution_an_int() -> None:
    data = DataConfig()
    assert data.resolution == 512
    assert (data.cache, data.clear_cache, data.strict, data.cache_dir) == (True, False, False, None)


def test_resolution_accepts_a_list_for_multi_resolution(tmp_path: Path) -> None:
    data = DataConfig(resolution=[512, 768], concepts=[{"path": tmp_path, "resolution": [256, 320]}])
    assert data.resolution == [512, 768]
    assert data.concepts[0].resolution == [256, 320]


@pytest.mark.parametrize("value", [32, [512, 512], [], 10000])
def test_bad_resolutions_are_rejected(value: object) -> None:
    with pytest.raises(ValidationError):
        DataConfig(resolution=value)


def test_repeats_and_samples_are_exclusive(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="either repeats or samples"):
        ConceptConfig(path=tmp_path, repeats=2, samples=5)
    assert ConceptConfig(path=tmp_path, samples=5).samples == 5


def test_concept_file_source_needs_a_file(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="concept_file"):
        ConceptConfig(path=tmp_path, caption={"source": "concept_file"})


def test_fixed_source_needs_text(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match=r"caption\.text"):
        ConceptConfig(path=tmp_path, caption={"source": "fixed"})


def test_invalid_regex_is_reported(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="invalid regular expression"):
        ConceptConfig(path=tmp_path, caption={"tag_dropout_regex": True, "tag_dropout_keep": ["(unclosed"]})


def test_alpha_background_channels_are_bytes(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="between 0 and 255"):
        ConceptConfig(path=tmp_path, image={"alpha_background": [0, 0, 300]})


def test_misspelled_concept_key_suggests_the_real_one(tmp_path: Path) -> None:
    config = tmp_path / "run.yaml"
    config.write_text(
        f"model:\n  base: org/model\ndata:\n  concepts:\n    - path: {tmp_path}\n      image:\n        flipp: 0.5\n"
    )
    with pytest.raises(ConfigError) as info:
        load_config(config, [])
    problems = {problem.path: problem.message for problem in info.value.problems}
    assert "did you mean 'data.concepts.0.image.flip'" in problems["data.concepts.0.image.flipp"]


def test_missing_concept_folder_is_a_config_error(tmp_path: Path) -> None:
    config = tmp_path / "run.yaml"
    config.write_text(f"model:\n  base: org/model\ndata:\n  concepts:\n    - path: {tmp_path / 'nope'}\n")
    with pytest.raises(ConfigError) as info:
        load_config(config, [])
    assert info.value.exit_code == 2
    assert "data.concepts.0.path" in {problem.path for problem in info.value.problems}


def _image_problems(tmp_path: Path, image: dict[str, object]) -> dict[str, str]:
    config = tmp_path / "run.yaml"
    config.write_text(
        yaml.safe_dump(
            {"model": {"base": "org/model"}, "data": {"concepts": [{"path": str(tmp_path), "image": image}]}}
        )
    )
    with pytest.raises(ConfigError) as info:
        load_config(config, [])
    return {problem.path: problem.message for problem in info.value.problems}


def test_mask_augmentations_are_off_by_default(tmp_path: Path) -> None:
    image = ConceptConfig(path=tmp_path).image
    assert (image.mask_shrink.enabled, image.mask_rotate_crop.enabled) == (False, False)
    assert (image.mask_shrink.min_radius, image.mask_shrink.max_radius) == (0.2, 1.0)
    crop = image.mask_rotate_crop
    assert (crop.min_padding, crop.max_padding, crop.min_size, crop.rotation) == (0.1, 0.3, 0.5, 20.0)


@pytest.mark.parametrize(
    ("image", "path", "words"),
    [
        ({"mask_shrink": {"min_radius": 0.8, "max_radius": 0.5}}, "mask_shrink", "min_radius (0.8)"),
        ({"mask_rotate_crop": {"min_padding": 0.5}}, "mask_rotate_crop", "min_padding (0.5)"),
        ({"mask_shrink": {"probability": 1.5}}, "mask_shrink.probability", "less than or equal to 1"),
        ({"mask_shrink": {"min_radius": 0}}, "mask_shrink.min_radius", "greater than 0"),
        ({"mask_rotate_crop": {"min_size": 0}}, "mask_rotate_crop.min_size", "greater than 0"),
        ({"mask_rotate_crop": {"rotation": 200}}, "mask_rotate_crop.rotation", "less than or equal to 180"),
        ({"mask_rotate_crop": {"enabled": "sometimes"}}, "mask_rotate_crop.enabled", "boolean"),
    ],
)
def test_bad_mask_augmentation_settings_name_the_key(tmp_path: Path, image, path: str, words: str) -> None:
    problems = _image_problems(tmp_path, image)
    assert words in problems[f"data.concepts.0.image.{path}"]


def test_misspelled_mask_augmentation_key_suggests_the_real_one(tmp_path: Path) -> None:
    problems = _image_problems(tmp_path, {"mask_shrink": {"enable": True}})
    assert (
        "did you mean 'data.concepts.0.image.mask_shrink.enabled'"
        in problems["data.concepts.0.image.mask_shrink.enable"]
    )
