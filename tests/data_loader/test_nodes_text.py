"""Caption nodes: sources, line choice and every text augmentation."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from onetrainer.data_loader.graph import SampleContext
from onetrainer.data_loader.pipeline import text_graph
from onetrainer.data_loader.scan import Sample
from onetrainer.util.config.data import ConceptConfig

GRAPH = text_graph()
TAGS = "photo of sks, dog, grass, sunny, red collar, outdoors"


def _caption(tmp_path: Path, content: str | None = TAGS, *, variation: int = 0, **caption: Any) -> str:
    """The final caption of `my_dog.png` whose sidecar holds `content` (None: no sidecar)."""
    image = tmp_path / "my_dog.png"
    caption_path = None
    if content is not None:
        caption_path = tmp_path / "my_dog.txt"
        caption_path.write_text(content)
    sample = Sample("c/my_dog.png", 0, image, 8, 8, None, caption_path)
    context = SampleContext(sample, ConceptConfig(path=tmp_path, caption=caption), (1, 0, "text", variation, 0, "id"))
    return GRAPH.run(context, {"image_path": image, "caption_path": caption_path}, ["caption"])["caption"]


def test_plain_caption_passes_through_untouched(tmp_path: Path) -> None:
    assert _caption(tmp_path, "  A  cat,sitting ") == "A  cat,sitting"


def test_one_line_is_chosen_per_variation(tmp_path: Path) -> None:
    chosen = {_caption(tmp_path, "one\ntwo\nthree\n", variation=v) for v in range(30)}
    assert chosen == {"one", "two", "three"}


def test_missing_caption_is_empty_or_filename(tmp_path: Path) -> None:
    assert _caption(tmp_path, None) == ""
    assert _caption(tmp_path, None, if_missing="filename") == "my_dog"


def test_filename_fixed_and_concept_file_sources(tmp_path: Path) -> None:
    lines = tmp_path / "captions.txt"
    lines.write_text("alpha\nbeta\n")
    assert _caption(tmp_path, source="filename") == "my_dog"
    assert _caption(tmp_path, source="fixed", text="a photo") == "a photo"
    picked = {_caption(tmp_path, source="concept_file", concept_file=lines, variation=v) for v in range(20)}
    assert picked == {"alpha", "beta"}


def test_shuffle_keeps_the_first_tags(tmp_path: Path) -> None:
    results = {_caption(tmp_path, variation=v, shuffle_tags=True, keep_tags=1) for v in range(10)}
    assert len(results) > 3
    for result in results:
        tags = result.split(", ")
        assert tags[0] == "photo of sks"
        assert sorted(tags) == sorted(TAGS.split(", "))


def test_tag_dropout_respects_keep_count_and_keep_list(tmp_path: Path) -> None:
    for v in range(10):
        tags = _caption(tmp_path, variation=v, tag_dropout=1.0, keep_tags=1, tag_dropout_keep=["sunny"]).split(", ")
        assert tags == ["photo of sks", "sunny"]


def test_tag_dropout_only_list_with_regex(tmp_path: Path) -> None:
    result = _caption(tmp_path, tag_dropout=1.0, tag_dropout_only=[r"red .*", "gr.ss"], tag_dropout_regex=True)
    assert result == "photo of sks, dog, sunny, outdoors"


def test_tag_dropout_probability_is_partial(tmp_path: Path) -> None:
    counts = [len(_caption(tmp_path, variation=v, tag_dropout=0.5).split(", ")) for v in range(40)]
    assert min(counts) < 6
    assert max(counts) > 1
    assert 2 < sum(counts) / len(counts) < 5


def test_capitalisation_styles(tmp_path: Path) -> None:
    styles = {_caption(tmp_path, "a Big cat", variation=v, random_capitalization=1.0) for v in range(40)}
    assert styles == {"a big cat", "A BIG CAT", "A Big Cat", "A big cat"}


@pytest.mark.parametrize("delimiter", [";", " "])
def test_other_delimiters(tmp_path: Path, delimiter: str) -> None:
    text = delimiter.join(["a", "b", "c", "d"])
    result = _caption(tmp_path, text, tag_delimiter=delimiter, shuffle_tags=True, variation=2)
    assert sorted(result.replace(";", " ").split()) == ["a", "b", "c", "d"]


def test_prefix_goes_before_every_line_of_every_source(tmp_path: Path) -> None:
    lines = {_caption(tmp_path, "one\ntwo\n", variation=v, prefix="<sks> ") for v in range(20)}
    assert lines == {"<sks> one", "<sks> two"}
    assert _caption(tmp_path, source="filename", prefix="<sks> ") == "<sks> my_dog"
    assert _caption(tmp_path, None, prefix="a photo of <sks>, ") == "a photo of <sks>"


def test_prefix_tags_can_be_kept_in_front_of_shuffled_ones(tmp_path: Path) -> None:
    for variation in range(10):
        caption = _caption(tmp_path, variation=variation, prefix="<sks>, ", shuffle_tags=True, keep_tags=1)
        assert caption.startswith("<sks>, ")


@pytest.mark.parametrize(
    ("prefix", "delimiter", "expected"),
    [("a photo of <sks>, ", ",", "a photo of <sks>"), ("<sks> | ", " | ", "<sks>"), ("<sks> ", ",", "<sks>")],
)
def test_a_prefix_alone_leaves_no_dangling_delimiter(
    tmp_path: Path, prefix: str, delimiter: str, expected: str
) -> None:
    """An image without a caption trains on the prefix alone, which should not end in a delimiter."""
    settings = {"prefix": prefix, "tag_delimiter": delimiter}
    assert _caption(tmp_path, None, **settings) == expected
    assert _caption(tmp_path, "  \n", **settings) == expected
    assert _caption(tmp_path, "dog", **settings) == f"{prefix}dog"


@pytest.mark.parametrize(
    ("caption", "delimiter", "separator"),
    [
        ("red, blue, green", ",", ", "),
        ("red,blue,green", ",", ","),
        ("red|blue|green", "|", "|"),
        ("red | blue | green", "|", " | "),
        ("red | blue | green", " | ", " | "),
        ("red;  blue;  green", ";", ";  "),
        ("red blue green", " ", " "),
    ],
)
def test_shuffled_tags_are_joined_as_the_caption_separates_them(
    tmp_path: Path, caption: str, delimiter: str, separator: str
) -> None:
    """The tags are re-joined with the delimiter and the spacing the caption uses (OneTrainer joins with the
    delimiter as given), never with a space added after a bare delimiter."""
    from itertools import permutations

    results = {_caption(tmp_path, caption, tag_delimiter=delimiter, shuffle_tags=True, variation=v) for v in range(12)}
    assert len(results) > 2
    assert results <= {separator.join(order) for order in permutations(["red", "blue", "green"])}


def test_tag_dropout_keeps_the_caption_separator(tmp_path: Path) -> None:
    result = _caption(
        tmp_path, "sks|red|blue", tag_delimiter="|", tag_dropout=1.0, keep_tags=1, tag_dropout_keep=["blue"]
    )
    assert result == "sks|blue"


def test_a_mixed_caption_is_joined_with_its_most_common_separator(tmp_path: Path) -> None:
    result = _caption(tmp_path, "a, b,c, d", shuffle_tags=True, variation=3)
    assert sorted(result.split(", ")) == ["a", "b", "c", "d"]


def test_capitalisation_keeps_placeholders_as_written(tmp_path: Path) -> None:
    """Placeholders are matched case-sensitively when captions are tokenised: `<SKS>` would not be `<sks>`."""
    caption = "a <sks> dog beside <Other-Token>, red"
    styles = {_caption(tmp_path, caption, variation=v, random_capitalization=1.0) for v in range(40)}
    assert styles == {
        "a <sks> dog beside <Other-Token>, red",
        "A <sks> DOG BESIDE <Other-Token>, RED",
        "A <sks> Dog Beside <Other-Token>, Red",
        "A <sks> dog beside <Other-Token>, red",
    }
    assert {_caption(tmp_path, "<sks>dog", variation=v, random_capitalization=1.0) for v in range(40)} == {
        "<sks>dog",
        "<sks>DOG",
        "<sks>Dog",
    }
