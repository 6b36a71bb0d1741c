"""`inspect` on run config files: validation and differences from the defaults and the preset."""

from __future__ import annotations

from pathlib import Path

from onetrainer.inspection.config_file import differences, flatten
from onetrainer.inspection.dispatch import inspect_path


def test_flatten_and_differences() -> None:
    assert flatten({"a": {"b": 1, "c": {"d": [1]}}, "e": {}}) == {"a.b": 1, "a.c.d": [1], "e": {}}
    assert differences({"a": {"b": 1, "c": 2}}, {"a": {"b": 1, "c": 3}}, "default") == [
        {"key": "a.c", "value": 2, "default": 3}
    ]


def test_valid_config_lists_changes_from_defaults_and_preset(tmp_path: Path) -> None:
    path = tmp_path / "run.yaml"
    path.write_text(
        "preset: sd15-lora\nmodel:\n  base: tiny:sd15\ntraining:\n  learning_rate: 0.000123\n"
        f"data:\n  concepts:\n    - path: {tmp_path}\n"
    )

    result = inspect_path(path)

    assert (result.kind, result.format, result.model_type) == ("config", "yaml", "sd15")
    assert result.details["valid"] is True
    from_preset = {item["key"]: item for item in result.details["changed_from_preset"]}
    assert from_preset["training.learning_rate"]["value"] == 0.000123
    assert from_preset["model.base"] == {
        "key": "model.base",
        "value": "tiny:sd15",
        "preset": from_preset["model.base"]["preset"],
    }
    assert "preset" not in from_preset
    from_defaults = {item["key"] for item in result.details["changed_from_defaults"]}
    assert {"training.learning_rate", "model.base", "preset"} <= from_defaults
    assert result.details["settings"]["preset"] == "sd15-lora"


def test_invalid_config_lists_every_problem(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("model:\n  base: tiny:sd15\ntraining:\n  learnig_rate: 1\n  batch_size: -1\n")

    result = inspect_path(path)

    assert result.details["valid"] is False
    keys = {problem["key"] for problem in result.details["problems"]}
    assert {"training.learnig_rate", "training.batch_size"} <= keys
    assert "INVALID" in result.summary


def test_broken_yaml_is_reported_as_invalid(tmp_path: Path) -> None:
    path = tmp_path / "broken.yml"
    path.write_text("model: [unclosed\n")

    result = inspect_path(path)

    assert result.details["valid"] is False
    assert "invalid YAML" in result.details["problems"][0]["message"]


def test_an_embedding_whose_placeholder_is_in_no_caption_is_invalid(tmp_path: Path) -> None:
    images = tmp_path / "images"
    images.mkdir()
    (images / "a.png").write_bytes(b"")
    (images / "a.txt").write_text("a dog")
    path = tmp_path / "run.yaml"
    path.write_text(
        f"model:\n  base: tiny:sd15\nmethod: embedding\nembedding:\n  placeholder: <sks>\n"
        f"data:\n  concepts:\n    - path: {images}\n"
    )

    result = inspect_path(path)

    assert result.details["valid"] is False
    assert [problem["key"] for problem in result.details["problems"]] == ["data.concepts.0"]
    assert result.invalid
