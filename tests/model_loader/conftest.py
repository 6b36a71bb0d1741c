"""Single-file checkpoints of the tiny models, written once per session by our own saver."""

from __future__ import annotations

from pathlib import Path

import pytest

from onetrainer.model_loader.stable_diffusion import load_stable_diffusion
from onetrainer.model_saver.stable_diffusion import StableDiffusionSaver
from onetrainer.util.enums import TrainingMethod


def _single_file(factory: pytest.TempPathFactory, folder: Path, name: str) -> Path:
    output = factory.mktemp("single-files") / f"{name}.safetensors"
    StableDiffusionSaver().save(load_stable_diffusion(folder), output, method=TrainingMethod.FULL, dtype=None)
    return output


@pytest.fixture(scope="session")
def sd15_single_file(tmp_path_factory: pytest.TempPathFactory, tiny_sd15_dir: Path) -> Path:
    return _single_file(tmp_path_factory, tiny_sd15_dir, "tiny-sd15")


@pytest.fixture(scope="session")
def sd2_single_file(tmp_path_factory: pytest.TempPathFactory, tiny_sd2_dir: Path) -> Path:
    return _single_file(tmp_path_factory, tiny_sd2_dir, "tiny-sd2-v")


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
