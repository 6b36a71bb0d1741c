"""`caption_folder` end to end on a tiny random-weight BLIP: files, modes, prefix/suffix, batching."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from onetrainer.dataset_tools.caption import CaptionMode, CaptionRequest, caption_folder, merged_caption
from onetrainer.dataset_tools.progress import ToolProgress
from onetrainer.dataset_tools.tiny import save_tiny_blip
from onetrainer.util.errors import UserError
from onetrainer.util.tiny.dataset import UNREADABLE_ODD_FILES, make_image_dataset


@pytest.fixture(scope="module")
def blip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_blip(tmp_path_factory.mktemp("captioners") / "blip")


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    return make_image_dataset(tmp_path / "images", count=5, with_captions=False, with_masks=True)


def _captions(folder: Path) -> dict[str, str]:
    return {path.name: path.read_text(encoding="utf-8") for path in sorted(folder.glob("*.txt"))}


def test_merged_caption_modes() -> None:
    assert merged_caption("old", "new", CaptionMode.REPLACE) == "new"
    assert merged_caption("old", "new", CaptionMode.ADD) == "old\nnew"
    assert merged_caption("", "new", CaptionMode.ADD) == "new"
    assert merged_caption("", "new", CaptionMode.FILL) == "new"


def test_writes_one_caption_per_image_and_no_sidecar_captions(blip_dir: Path, folder: Path) -> None:
    summary = caption_folder(CaptionRequest(folder, model=str(blip_dir), max_new_tokens=8, batch_size=2))

    captions = _captions(folder)
    assert sorted(captions) == [f"img-{index:03d}.txt" for index in range(5)]
    assert all(text.endswith("\n") and text.strip() and "\n" not in text.strip() for text in captions.values())
    assert summary.found == 5
    assert sorted(path.name for path in summary.written) == sorted(captions)
    assert summary.failed == []


def test_prefix_and_suffix_are_joined_as_typed(blip_dir: Path, folder: Path) -> None:
    caption_folder(CaptionRequest(folder, model=str(blip_dir), max_new_tokens=8))
    plain = _captions(folder)

    caption_folder(
        CaptionRequest(
            folder, model=str(blip_dir), max_new_tokens=8, mode=CaptionMode.REPLACE, prefix="sks cat, ", suffix=", best"
        )
    )

    for name, text in _captions(folder).items():
        assert text == f"sks cat, {plain[name].strip()}, best\n"


def test_batching_does_not_change_captions(blip_dir: Path, folder: Path, tmp_path: Path) -> None:
    other = shutil.copytree(folder, tmp_path / "copy")
    reports: list[ToolProgress] = []

    on_cpu = {"model": str(blip_dir), "max_new_tokens": 8, "device": "cpu"}  # (a GPU's kernels vary by batch size)
    caption_folder(CaptionRequest(folder, batch_size=1, **on_cpu))
    caption_folder(CaptionRequest(other, batch_size=3, **on_cpu), reports.append)

    assert _captions(folder) == _captions(other)
    assert [(report.done, report.total) for report in reports] == [(0, 5), (3, 5), (5, 5)]


def test_fill_keeps_existing_captions_and_add_appends_a_line(blip_dir: Path, folder: Path) -> None:
    (folder / "img-001.txt").write_text("my own caption\n")
    (folder / "img-002.txt").write_text("  \n")  # empty counts as missing

    filled = caption_folder(CaptionRequest(folder, model=str(blip_dir), max_new_tokens=8, mode=CaptionMode.FILL))

    assert [path.name for path in filled.kept] == ["img-001.jpg"]
    assert (folder / "img-001.txt").read_text() == "my own caption\n"
    generated = (folder / "img-002.txt").read_text().strip()
    assert generated

    caption_folder(CaptionRequest(folder, model=str(blip_dir), max_new_tokens=8, mode=CaptionMode.ADD, prefix="v2 "))

    assert (folder / "img-001.txt").read_text().splitlines()[0] == "my own caption"
    assert (folder / "img-002.txt").read_text().splitlines() == [generated, f"v2 {generated}"]


def test_unreadable_images_are_reported_and_skipped(blip_dir: Path, tmp_path: Path) -> None:
    folder = make_image_dataset(tmp_path / "odd", count=2, with_captions=False, with_masks=False, odd_images=True)

    summary = caption_folder(CaptionRequest(folder, model=str(blip_dir), max_new_tokens=8, batch_size=4))

    assert sorted(path.name for path, _ in summary.failed) == sorted(UNREADABLE_ODD_FILES)
    reasons = {path.name: reason for path, reason in summary.failed}
    assert "empty file" in reasons["odd-empty.png"]
    assert "truncated" in reasons["odd-truncated.png"]
    for name in UNREADABLE_ODD_FILES:
        assert not (folder / Path(name).with_suffix(".txt")).exists()
    assert len(summary.written) == summary.found - len(UNREADABLE_ODD_FILES)


def test_fill_on_a_finished_folder_loads_no_model(tmp_path: Path) -> None:
    folder = make_image_dataset(tmp_path / "done", count=3, with_captions=True, with_masks=False)

    summary = caption_folder(CaptionRequest(folder, model="org/model-that-does-not-exist"))

    assert summary.written == []
    assert len(summary.kept) == 3


def test_unavailable_hub_model_is_a_user_error(folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserError, match="is not on this machine") as caught:
        caption_folder(CaptionRequest(folder, model="blip"))
    assert "Salesforce/blip-image-captioning-large" in caught.value.message
    assert "HF_HUB_OFFLINE" in (caught.value.hint or "")


def test_missing_local_model_path_is_a_user_error(folder: Path, tmp_path: Path) -> None:
    with pytest.raises(UserError, match="model not found"):
        caption_folder(CaptionRequest(folder, model=str(tmp_path / "no-such-model")))


def test_a_folder_that_is_not_an_image_to_text_model_is_a_user_error(folder: Path, tiny_sd15_dir: Path) -> None:
    with pytest.raises(UserError):
        caption_folder(CaptionRequest(folder, model=str(tiny_sd15_dir / "text_encoder")))


@pytest.mark.parametrize(
    ("name", "repo"), [("blip2", "Salesforce/blip2-opt-2.7b"), ("florence2", "florence-community/Florence-2-large")]
)
def test_model_short_names_resolve_to_their_hub_ids(
    name: str, repo: str, folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserError, match="is not on this machine") as caught:
        caption_folder(CaptionRequest(folder, model=name))
    assert repo in caught.value.message


def test_florence2_is_prompted_with_its_task_token_and_others_are_not() -> None:
    from types import SimpleNamespace

    import torch

    from onetrainer.dataset_tools.captioners.image_to_text import ImageToTextCaptioner

    def captioner(model_type: str, prompt: str | None) -> ImageToTextCaptioner:
        model = SimpleNamespace(config=SimpleNamespace(model_type=model_type))
        return ImageToTextCaptioner(None, model, device="cpu", dtype=torch.float32, prompt=prompt, max_new_tokens=8)

    assert captioner("florence2", None).prompt == "<DETAILED_CAPTION>"
    assert captioner("florence2", "<CAPTION>").prompt == "<CAPTION>"
    assert captioner("blip", None).prompt is None


@pytest.mark.parametrize(
    ("encoder_decoder", "text_encoder_decoder", "expected"),
    [(False, False, "a cat"), (True, True, "a photo of a cat"), (False, True, "a photo of a cat")],
    ids=["decoder-only (BLIP, BLIP-2 OPT)", "encoder-decoder (Florence-2)", "BLIP-2 Flan-T5"],
)
def test_only_models_that_return_the_prompt_have_it_cut(
    encoder_decoder: bool, text_encoder_decoder: bool, expected: str
) -> None:
    from types import SimpleNamespace

    import torch

    from onetrainer.dataset_tools.captioners.image_to_text import ImageToTextCaptioner

    class LowercasingTokenizer:
        def __call__(self, text: str, *, add_special_tokens: bool) -> dict[str, list[str]]:
            return {"input_ids": text.lower().split()}

        def decode(self, ids: list[str], *, skip_special_tokens: bool) -> str:
            return " ".join(ids)

    config = SimpleNamespace(
        model_type="any",
        is_encoder_decoder=encoder_decoder,
        text_config=SimpleNamespace(is_encoder_decoder=text_encoder_decoder),
    )
    captioner = ImageToTextCaptioner(
        SimpleNamespace(tokenizer=LowercasingTokenizer()),
        SimpleNamespace(config=config),
        device="cpu",
        dtype=torch.float32,
        prompt="A Photo  of",
        max_new_tokens=8,
    )

    assert captioner.without_prompt("a photo of a cat") == expected
    assert captioner.without_prompt("a dog") == "a dog"


def test_a_caption_that_cannot_be_written_fails_only_its_image(blip_dir: Path, folder: Path) -> None:
    (folder / "img-000.txt").mkdir()  # a folder where the caption file goes
    summary = caption_folder(CaptionRequest(folder, model=str(blip_dir), max_new_tokens=8, mode=CaptionMode.REPLACE))
    assert [(path.name, "cannot write" in reason) for path, reason in summary.failed] == [("img-000.png", True)]
    assert sorted(path.name for path in summary.written) == [f"img-{index:03d}.txt" for index in range(1, 5)]


def test_a_caption_that_is_not_utf8_is_not_added_to(blip_dir: Path, folder: Path) -> None:
    """Read with its bytes replaced, it would be rewritten without them."""
    original = b"\xff\xfe\x00a caption in another encoding"
    (folder / "img-001.txt").write_bytes(original)
    summary = caption_folder(CaptionRequest(folder, model=str(blip_dir), max_new_tokens=8, mode=CaptionMode.ADD))
    assert (folder / "img-001.txt").read_bytes() == original
    ((failed, reason),) = summary.failed
    assert failed.stem == "img-001"
    assert "img-001.txt: not UTF-8" in reason


def test_images_sharing_a_caption_file_are_skipped_not_merged(blip_dir: Path, folder: Path) -> None:
    """`img-000.jpg` beside `img-000.png`: adding to `img-000.txt` merged both images' captions into it."""
    shutil.copy(folder / "img-001.jpg", folder / "img-000.jpg")
    (folder / "img-000.txt").write_text("my own caption\n")

    summary = caption_folder(CaptionRequest(folder, model=str(blip_dir), max_new_tokens=8, mode=CaptionMode.ADD))

    assert sorted(path.name for path, _ in summary.failed) == ["img-000.jpg", "img-000.png"]
    assert all("would write the same img-000.txt" in reason for _, reason in summary.failed)
    assert (folder / "img-000.txt").read_text() == "my own caption\n"
    assert sorted(path.name for path in summary.written) == [f"img-{index:03d}.txt" for index in range(1, 5)]
    assert summary.processed == 4
