"""An embedding whose placeholder is in no caption trains nothing: refused before anything loads."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from onetrainer.data_loader.placeholders import check_placeholders, placeholder_problems
from onetrainer.util.config.schema import TrainConfig
from onetrainer.util.errors import ConfigError


def _folder(root: Path, name: str, captions: dict[str, str | None]) -> Path:
    """Image files (never decoded by the check, so empty) with their sidecar captions."""
    folder = root / name
    folder.mkdir()
    for stem, caption in captions.items():
        (folder / f"{stem}.png").write_bytes(b"")
        if caption is not None:
            (folder / f"{stem}.txt").write_text(caption)
    return folder


def _config(tmp_path: Path, concepts: list[dict[str, Any]], **extra: Any) -> TrainConfig:
    raw = {
        "model": {"base": "org/model"},
        "method": "embedding",
        "embedding": {"placeholder": "<sks>"},
        "workspace": str(tmp_path / "ws"),
        "data": {"concepts": concepts},
        **extra,
    }
    return TrainConfig.model_validate(raw)


def _problems(config: TrainConfig) -> dict[str, str]:
    return {problem.path: problem.message for problem in placeholder_problems(config)}


def test_each_concept_without_the_placeholder_is_named(tmp_path: Path) -> None:
    dogs = _folder(tmp_path, "dogs", {"a": "a photo of <sks> dog", "b": "a dog"})
    cats = _folder(tmp_path, "cats", {"a": "a cat", "b": None})
    config = _config(tmp_path, [{"path": dogs}, {"path": cats, "name": "kittens"}])
    assert _problems(config) == {
        "data.concepts.1": "no caption of concept 'kittens' contains '<sks>': its images would train nothing "
        "(method: embedding)"
    }


def test_a_prefix_inserts_the_placeholder(tmp_path: Path) -> None:
    cats = _folder(tmp_path, "cats", {"a": "a cat", "b": None})
    config = _config(tmp_path, [{"path": cats, "caption": {"prefix": "a photo of <sks>, "}}])
    assert _problems(config) == {}
    check_placeholders(config)


@pytest.mark.parametrize(
    "caption",
    [
        {"source": "fixed", "text": "a photo of <sks>"},
        {"source": "filename"},
        {"if_missing": "filename"},
    ],
)
def test_every_caption_source_is_read(tmp_path: Path, caption: dict[str, Any]) -> None:
    folder = _folder(tmp_path, "images", {"<sks> on grass": None})
    assert _problems(_config(tmp_path, [{"path": folder, "caption": caption}])) == {}
    assert _problems(_config(tmp_path, [{"path": folder}])) != {}


def test_a_concept_file_is_read(tmp_path: Path) -> None:
    folder = _folder(tmp_path, "images", {"a": None})
    lines = tmp_path / "captions.txt"
    lines.write_text("a dog\na <sks> dog\n")
    config = _config(tmp_path, [{"path": folder, "caption": {"source": "concept_file", "concept_file": lines}}])
    assert _problems(config) == {}


def test_prior_validation_disabled_and_empty_concepts_need_no_placeholder(tmp_path: Path) -> None:
    trained = _folder(tmp_path, "trained", {"a": "<sks>"})
    plain = _folder(tmp_path, "plain", {"a": "a dog"})
    empty = _folder(tmp_path, "empty", {})
    concepts = [
        {"path": trained},
        {"path": plain, "type": "prior"},
        {"path": plain, "type": "validation"},
        {"path": plain, "enabled": False},
        {"path": empty},
    ]
    assert _problems(_config(tmp_path, concepts)) == {}


def test_a_trained_additional_embedding_must_appear_somewhere(tmp_path: Path) -> None:
    folder = _folder(tmp_path, "images", {"a": "a photo of <style>"})
    additional = [{"placeholder": "<style>"}, {"placeholder": "<unused>"}, {"placeholder": "<fixed>", "train": False}]
    config = _config(tmp_path, [{"path": folder}], method="lora", embedding={"additional": additional})
    assert _problems(config) == {
        "embedding.additional.1.placeholder": "in no caption of concept(s) 'images' (data.concepts.0): it would "
        "not train"
    }


def test_a_concept_with_only_an_additional_placeholder_still_trains(tmp_path: Path) -> None:
    main = _folder(tmp_path, "main", {"a": "<sks>"})
    extra = _folder(tmp_path, "extra", {"a": "<style>"})
    config = _config(
        tmp_path,
        [{"path": main}, {"path": extra}],
        embedding={"placeholder": "<sks>", "additional": [{"placeholder": "<style>"}]},
    )
    assert _problems(config) == {}


def test_the_error_says_how_to_insert_the_placeholder(tmp_path: Path) -> None:
    folder = _folder(tmp_path, "images", {"a": "a dog"})
    with pytest.raises(ConfigError) as info:
        check_placeholders(_config(tmp_path, [{"path": folder}]))
    assert info.value.exit_code == 2
    assert "\"data.concepts.0.caption.prefix='<sks>, '\"" in (info.value.hint or "")


def test_lora_without_additional_embeddings_is_not_checked(tmp_path: Path) -> None:
    folder = _folder(tmp_path, "images", {"a": "a dog"})
    assert _problems(_config(tmp_path, [{"path": folder}], method="lora")) == {}


def test_images_are_never_opened(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from PIL import Image

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("an image was opened")

    monkeypatch.setattr(Image, "open", refuse)
    folder = _folder(tmp_path, "images", {"a": "a dog"})
    assert list(_problems(_config(tmp_path, [{"path": folder}]))) == ["data.concepts.0"]
