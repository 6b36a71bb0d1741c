"""The WD-style ONNX tagger on a tiny hand-wired model whose scores are known (see `save_tiny_tagger`)."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from onetrainer.dataset_tools.caption import CaptionMode, CaptionRequest, caption_folder
from onetrainer.dataset_tools.captioners.wd14 import Tag, TaggerSettings, normalise_tag, open_tagger, tagger_files
from onetrainer.dataset_tools.tiny import save_tiny_tagger
from onetrainer.util.errors import UserError

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")


@pytest.fixture(scope="module")
def tagger_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_tagger(tmp_path_factory.mktemp("taggers") / "wd-tiny")


def _square(colour: tuple[int, int, int], size: int = 24) -> Image.Image:
    return Image.new("RGB", (size, size), colour)


def _tagger(tagger_dir: Path, **settings: object) -> object:
    return open_tagger(str(tagger_dir), device="cpu", thresholds=TaggerSettings(**settings))


def test_tags_follow_colours_in_bgr_order_and_skip_ratings(tagger_dir: Path) -> None:
    tagger = _tagger(tagger_dir)
    red, green, blue = (255, 0, 0), (0, 255, 0), (0, 0, 255)

    captions = tagger.caption([_square(red), _square(green), _square(blue)])

    assert captions == ["red hair, ^_^", "hatsune miku, ^_^", "blue sky, ^_^"]


def test_general_and_character_thresholds_apply_per_category(tagger_dir: Path) -> None:
    strict_general = _tagger(tagger_dir, general_threshold=0.6)
    strict_character = _tagger(tagger_dir, character_threshold=0.99)

    assert strict_general.caption([_square((255, 0, 0))]) == ["red hair"]
    assert strict_character.caption([_square((0, 255, 0))]) == ["^_^"]


def test_characters_come_first_then_general_tags_by_score(tagger_dir: Path) -> None:
    # Green and red at full strength: hatsune_miku (character) and red_hair (0.98) and ^_^ (0.5).
    assert _tagger(tagger_dir).caption([_square((255, 255, 0))]) == ["hatsune miku, red hair, ^_^"]


def test_exclude_matches_tags_in_either_spelling(tagger_dir: Path) -> None:
    tagger = _tagger(tagger_dir, exclude=frozenset({normalise_tag("Red_Hair"), normalise_tag("^_^")}))
    assert tagger.caption([_square((255, 0, 0))]) == [""]


def test_non_square_images_are_padded_with_white(tagger_dir: Path) -> None:
    # A red 32x8 strip padded to a white square: red stays 1.0, blue and green rise to 0.75 (score 0.88).
    captions = _tagger(tagger_dir, character_threshold=0.9).caption([Image.new("RGB", (32, 8), (255, 0, 0))])
    assert captions == ["red hair, blue sky, ^_^"]


def test_short_emoticon_tags_keep_their_underscores() -> None:
    assert Tag("^_^", 0).display == "^_^"
    assert Tag("long_hair", 0).display == "long hair"


def test_caption_folder_with_a_tagger_path(tagger_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "images"
    folder.mkdir()
    _square((255, 0, 0)).save(folder / "a.png")
    _square((0, 0, 255)).save(folder / "b.jpg")

    caption_folder(CaptionRequest(folder, model=str(tagger_dir / "model.onnx"), mode=CaptionMode.REPLACE, prefix="x, "))

    assert (folder / "a.txt").read_text() == "x, red hair, ^_^\n"
    assert (folder / "b.txt").read_text() == "x, blue sky, ^_^\n"


def test_missing_tag_list_is_a_user_error(tagger_dir: Path, tmp_path: Path) -> None:
    lonely = tmp_path / "model.onnx"
    lonely.write_bytes((tagger_dir / "model.onnx").read_bytes())
    with pytest.raises(UserError, match=r"selected_tags\.csv"):
        tagger_files(str(lonely))


def test_tag_list_that_does_not_match_the_model_is_a_user_error(tagger_dir: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "model.onnx").write_bytes((tagger_dir / "model.onnx").read_bytes())
    (broken / "selected_tags.csv").write_text("tag_id,name,category,count\n0,only_one,0,0\n")
    with pytest.raises(UserError, match="outputs 5 scores"):
        _tagger(broken)


def test_unavailable_hub_tagger_is_a_user_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserError, match="is not on this machine"):
        open_tagger("SmilingWolf/wd-v1-4-vit-tagger-v2", device="cpu", thresholds=TaggerSettings())


def test_a_named_gpu_is_the_one_onnxruntime_runs_on(tagger_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import onnxruntime

    asked: list[list[object]] = []
    session = onnxruntime.InferenceSession

    def record(path: str, providers: list[object]) -> object:
        asked.append(providers)
        return session(path, providers=["CPUExecutionProvider"])

    monkeypatch.setattr(
        onnxruntime, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"]
    )
    monkeypatch.setattr(onnxruntime, "InferenceSession", record)
    for device in ("cuda:1", "cuda"):
        open_tagger(str(tagger_dir), device=device, thresholds=TaggerSettings())
    assert asked == [
        [("CUDAExecutionProvider", {"device_id": 1}), "CPUExecutionProvider"],
        [("CUDAExecutionProvider", {"device_id": 0}), "CPUExecutionProvider"],
    ]
