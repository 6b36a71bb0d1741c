"""Single-file checkpoints of the tiny models, written once per session by our own saver."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from onetrainer.model_loader.pipeline import load_model
from onetrainer.model_saver.diffusion import DiffusionSaver
from onetrainer.util.enums import TrainingMethod


def _single_file(factory: pytest.TempPathFactory, folder: Path, name: str) -> Path:
    output = factory.mktemp("single-files") / f"{name}.safetensors"
    DiffusionSaver().save(load_model(folder), output, method=TrainingMethod.FULL, dtype=None)
    return output


@pytest.fixture(scope="session")
def sd15_single_file(tmp_path_factory: pytest.TempPathFactory, tiny_sd15_dir: Path) -> Path:
    return _single_file(tmp_path_factory, tiny_sd15_dir, "tiny-sd15")


@pytest.fixture(scope="session")
def sd2_single_file(tmp_path_factory: pytest.TempPathFactory, tiny_sd2_dir: Path) -> Path:
    return _single_file(tmp_path_factory, tiny_sd2_dir, "tiny-sd2-v")


@pytest.fixture
def cache_hub_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[[str, Path], Path]:
    """`cache_hub_model(repo_id, folder)`: makes `tmp_path/hub` this test's Hugging Face cache and puts `folder`
    in it as `repo_id`'s main revision, as a download would leave it; returns the snapshot folder."""

    def cache(repo_id: str, folder: Path) -> Path:
        import shutil

        import huggingface_hub.constants

        repo = tmp_path / "hub" / f"models--{repo_id.replace('/', '--')}"
        shutil.copytree(folder, repo / "snapshots" / ("0" * 40))
        (repo / "refs").mkdir()
        (repo / "refs" / "main").write_text("0" * 40)
        monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
        return repo / "snapshots" / ("0" * 40)

    return cache


@pytest.fixture
def small_tokenizer():
    """A valid CLIP tokenizer of 100 tokens (49 characters, each also ending a word, and bos/eos)."""
    from transformers import CLIPTokenizer

    from onetrainer.util.tiny.tokenizer import BOS_TOKEN, EOS_TOKEN, byte_alphabet

    letters = byte_alphabet()[:49]
    vocab = [*letters, *(letter + "</w>" for letter in letters), BOS_TOKEN, EOS_TOKEN]
    return CLIPTokenizer(
        vocab={token: index for index, token in enumerate(vocab)},
        merges=[],
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=EOS_TOKEN,
        unk_token=EOS_TOKEN,
        model_max_length=77,
    )
