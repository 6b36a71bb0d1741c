"""Values OneTrainer could not read are reported with their key, never replaced by defaults without a word."""

import json
from pathlib import Path

import pytest

from onetrainer.util.config.onetrainer_json.importer import Imported, import_onetrainer
from onetrainer.util.config.onetrainer_json.tables import CURRENT_VERSION

BASE = {"model_type": "STABLE_DIFFUSION_15", "training_method": "LORA", "base_model_name": "org/m"}


@pytest.fixture
def convert(tmp_path: Path):
    def run(**settings: object) -> Imported:
        path = tmp_path / "config.json"
        path.write_text(json.dumps({"__version": CURRENT_VERSION, **BASE, "samples": [], **settings}), encoding="utf-8")
        return import_onetrainer(path)

    return run


def unsupported(imported: Imported) -> dict[str, str]:
    return {item.key: item.why for item in imported.unsupported}


def test_concepts_that_are_no_list_are_refused(convert) -> None:
    imported = convert(concepts="notalist")
    assert unsupported(imported)["concepts"].startswith("expected a list of concepts")
    assert imported.data["data"].get("concepts", []) == []


def test_concept_entries_that_are_no_objects_are_refused_and_left_out(convert) -> None:
    imported = convert(concepts=[5, {"path": "images"}, None])
    found = unsupported(imported)
    assert found["concepts.0"] == "expected an object in the list of concepts; it is left out"
    assert "concepts.2" in found
    assert [concept["path"] for concept in imported.data["data"]["concepts"]] == ["images"]


def test_sample_entries_that_are_no_objects_are_refused(convert) -> None:
    assert "samples.0" in unsupported(convert(samples=["a cat"]))


@pytest.mark.parametrize("value", [5, "ADAMW", [1]])
def test_an_optimizer_that_is_no_object_is_refused(convert, value: object) -> None:
    imported = convert(concepts=[], optimizer=value)
    assert unsupported(imported)["optimizer"].startswith("expected an object")


def test_a_part_that_is_no_object_is_refused(convert) -> None:
    assert unsupported(convert(concepts=[], unet="yes"))["unet"].startswith("expected an object")


def test_a_folder_named_as_the_concept_file_is_refused_saying_how_to_use_it(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    config = tmp_path / "config.json"
    config.write_text(json.dumps({**BASE, "concept_file_name": "images"}), encoding="utf-8")
    why = unsupported(import_onetrainer(config))["concept_file_name"]
    assert why.startswith("a folder, not a concept file")
    assert f"data.concepts.0.path={tmp_path / 'images'}" in why


def test_a_version_newer_than_known_is_noted(convert) -> None:
    imported = convert(concepts=[], __version=CURRENT_VERSION + 1)
    notes = {item.key: item.why for item in imported.notes}
    assert notes["__version"].startswith(f"newer than the versions this onetrainer knows (up to {CURRENT_VERSION})")
    assert "__version" not in {item.key for item in convert(concepts=[]).notes}
