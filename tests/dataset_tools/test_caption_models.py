"""`caption_folder` end to end on tiny random-weight BLIP-2 (OPT) and Florence-2 (BART) checkpoints.

The folders come from `save_tiny_blip2` / `save_tiny_florence2` and load through the same
`AutoProcessor` / `AutoModelForImageTextToText` path as the hub checkpoints `--model blip2` and
`--model florence2` name, so a processor call, prompt or generation argument that the real classes
reject or misread fails here. The captions are nonsense; the tests check what reaches the model and
what reaches the caption files.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from onetrainer.dataset_tools.caption import CaptionMode, CaptionRequest, caption_folder
from onetrainer.dataset_tools.captioners.image_to_text import ImageToTextCaptioner
from onetrainer.dataset_tools.tiny import save_tiny_blip, save_tiny_blip2, save_tiny_florence2
from onetrainer.util.errors import UserError
from onetrainer.util.tiny.dataset import make_image_dataset

if TYPE_CHECKING:
    import torch

COUNT = 4
NEW_TOKENS = 8


@pytest.fixture(scope="module")
def blip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_blip(tmp_path_factory.mktemp("captioners") / "blip")


@pytest.fixture(scope="module")
def blip2_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_blip2(tmp_path_factory.mktemp("captioners") / "blip2")


@pytest.fixture(scope="module")
def florence2_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_florence2(tmp_path_factory.mktemp("captioners") / "florence2")


@pytest.fixture(params=["blip2", "florence2"])
def model_dir(request: pytest.FixtureRequest) -> Path:
    return request.getfixturevalue(f"{request.param}_dir")


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    return make_image_dataset(tmp_path / "images", count=COUNT, with_captions=False, with_masks=False)


class Generation:
    """One `model.generate` call: the processor that made its inputs, the inputs and the output ids."""

    def __init__(self, processor: Any, inputs: dict[str, Any], output: torch.Tensor) -> None:
        self.processor = processor
        self.inputs = inputs
        self.output = output

    def decode(self, ids: Any) -> str:
        return " ".join(self.processor.tokenizer.decode(ids, skip_special_tokens=True).split())


def record_generations(monkeypatch: pytest.MonkeyPatch) -> list[Generation]:
    """Make every captioner that `caption_folder` opens record its `generate` calls in the returned list."""
    calls: list[Generation] = []
    load = ImageToTextCaptioner.load.__func__

    def recording_load(cls: type[ImageToTextCaptioner], *args: Any, **kwargs: Any) -> ImageToTextCaptioner:
        captioner = load(cls, *args, **kwargs)
        generate = captioner.model.generate

        def recording_generate(**inputs: Any) -> torch.Tensor:
            output = generate(**inputs)
            calls.append(Generation(captioner.processor, inputs, output))
            return output

        captioner.model.generate = recording_generate
        return captioner

    monkeypatch.setattr(ImageToTextCaptioner, "load", classmethod(recording_load))
    return calls


def _captions(folder: Path) -> dict[str, str]:
    return {path.name: path.read_text(encoding="utf-8") for path in sorted(folder.glob("*.txt"))}


def _request(folder: Path, model: Path, **options: Any) -> CaptionRequest:
    return CaptionRequest(folder, model=str(model), max_new_tokens=NEW_TOKENS, device="cpu", **options)


def test_writes_one_single_line_caption_per_image(model_dir: Path, folder: Path) -> None:
    summary = caption_folder(_request(folder, model_dir, batch_size=3))

    captions = _captions(folder)
    assert sorted(captions) == [f"img-{index:03d}.txt" for index in range(COUNT)]
    assert all(text.endswith("\n") and text.strip() and "\n" not in text.strip() for text in captions.values())
    assert sorted(path.name for path in summary.written) == sorted(captions)
    assert summary.failed == []


def test_captions_are_deterministic_and_do_not_depend_on_batching(
    model_dir: Path, folder: Path, tmp_path: Path
) -> None:
    copies = [shutil.copytree(folder, tmp_path / f"copy-{index}") for index in range(2)]

    caption_folder(_request(folder, model_dir, batch_size=1))
    caption_folder(_request(copies[0], model_dir, batch_size=COUNT))
    caption_folder(_request(copies[1], model_dir, batch_size=COUNT))

    assert _captions(folder) == _captions(copies[0]) == _captions(copies[1])
    assert len(set(_captions(folder).values())) > 1, "different images should get different captions"


def test_fill_add_and_replace(model_dir: Path, folder: Path) -> None:
    (folder / "img-001.txt").write_text("my own caption\n")

    filled = caption_folder(_request(folder, model_dir, mode=CaptionMode.FILL))
    after_fill = _captions(folder)
    caption_folder(_request(folder, model_dir, mode=CaptionMode.ADD, prefix="v2 "))
    after_add = _captions(folder)
    caption_folder(_request(folder, model_dir, mode=CaptionMode.REPLACE))
    generated = {name: text.strip() for name, text in _captions(folder).items()}

    assert [path.name for path in filled.kept] == ["img-001.jpg"]
    assert after_fill["img-001.txt"] == "my own caption\n"
    assert after_fill["img-000.txt"] == f"{generated['img-000.txt']}\n"
    assert after_add["img-001.txt"] == f"my own caption\nv2 {generated['img-001.txt']}\n"
    assert after_add["img-000.txt"] == f"{generated['img-000.txt']}\nv2 {generated['img-000.txt']}\n"


def test_half_precision_on_the_cpu(model_dir: Path, folder: Path) -> None:
    summary = caption_folder(_request(folder, model_dir, dtype="bf16", batch_size=2))

    assert len(summary.written) == COUNT
    assert all(text.strip() for text in _captions(folder).values())


@pytest.mark.parametrize(
    ("prompt", "question"),
    [
        (None, "Describe in detail what is shown in the image."),
        ("<MORE_DETAILED_CAPTION>", "Describe with a paragraph what is shown in the image."),
        ("What is in the picture?", "What is in the picture?"),
    ],
)
def test_florence2_gets_its_task_question_and_captions_are_only_the_answer(
    florence2_dir: Path, folder: Path, monkeypatch: pytest.MonkeyPatch, prompt: str | None, question: str
) -> None:
    calls = record_generations(monkeypatch)

    caption_folder(_request(folder, florence2_dir, batch_size=COUNT, prompt=prompt))

    [call] = calls
    assert [call.decode(row) for row in call.inputs["input_ids"]] == [question] * COUNT
    image_token = call.processor.tokenizer.convert_tokens_to_ids(call.processor.image_token)
    assert (call.inputs["input_ids"] == image_token).sum(dim=1).tolist() == [call.processor.num_image_tokens] * COUNT
    answers = [call.decode(row) for row in call.output]
    assert [text.strip() for text in _captions(folder).values()] == answers
    assert not any("CAPTION" in answer or question in answer for answer in answers)


def test_florence2_task_token_with_trailing_text_is_a_user_error(florence2_dir: Path, folder: Path) -> None:
    with pytest.raises(UserError, match="does not accept the prompt") as caught:
        caption_folder(_request(folder, florence2_dir, prompt="<CAPTION> of a cat"))

    assert "only content" in (caught.value.hint or "")
    assert _captions(folder) == {}


def test_blip2_without_a_prompt_captions_from_its_image_tokens(
    blip2_dir: Path, folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = record_generations(monkeypatch)

    caption_folder(_request(folder, blip2_dir, batch_size=COUNT))

    [call] = calls
    assert "input_ids" not in call.inputs  # BLIP-2 builds its own `<image>` * 8 + bos start
    assert [text.strip() for text in _captions(folder).values()] == [call.decode(row) for row in call.output]


@pytest.mark.parametrize("model", ["blip", "blip2"])
def test_a_continued_prompt_is_not_written_into_the_caption(
    model: str, folder: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> None:
    calls = record_generations(monkeypatch)

    caption_folder(_request(folder, request.getfixturevalue(f"{model}_dir"), batch_size=COUNT, prompt="A photo of"))

    [call] = calls
    prompt_length = call.inputs["input_ids"].shape[1]
    full = [call.decode(row) for row in call.output]
    assert all(text.lower().startswith("a photo of") for text in full), "the model writes the prompt back"
    captions = [text.strip() for text in _captions(folder).values()]
    assert captions == [text[len("a photo of") :].strip() for text in full]
    if model == "blip2":  # OPT returns the whole input (8 image tokens, bos, prompt) before its own tokens
        assert captions == [call.decode(row[prompt_length:]) for row in call.output]
