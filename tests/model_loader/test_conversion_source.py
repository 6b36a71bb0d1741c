"""`convert`'s source: a single file is streamed one tensor at a time, never read whole."""

from __future__ import annotations

from pathlib import Path

import pytest

from onetrainer.model_loader.checkpoint import WeightsFile
from onetrainer.model_loader.conversion_source import open_conversion_source
from onetrainer.util.errors import UserError


def test_single_file_stream_reads_tensors_lazily(sd15_single_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    reads: list[str] = []
    original = WeightsFile.tensor

    def counting(self: WeightsFile, key: str):
        reads.append(key)
        return original(self, key)

    monkeypatch.setattr(WeightsFile, "tensor", counting)
    with open_conversion_source(sd15_single_file, config="tiny:sd15", tokenizer="tiny:sd15") as source:
        assert source.stream is not None
        stream = source.stream(False, ("unet", "vae", "text_encoder"))
        name, tensor = next(stream)
        assert "." in name
        assert tensor.numel() > 0
        read_for_first = len(reads)
        assert 1 <= read_for_first <= 4, "the first tensor must not need the whole file"
        rest = sum(1 for _ in stream)
    assert rest > 50
    assert len(reads) == len(set(reads)), "every source tensor is read exactly once"


def test_a_file_whose_unet_is_only_an_ema_copy_is_not_converted_with_the_configs_unet(
    sd15_single_file: Path, tmp_path: Path
) -> None:
    from safetensors.torch import save_file

    path = tmp_path / "ema-only.safetensors"
    with WeightsFile(sd15_single_file) as weights:
        tensors = {k: weights.tensor(k) for k in weights if not k.startswith("model.diffusion_model.")}
        tensors |= {
            "model_ema." + k.removeprefix("model.").replace(".", ""): weights.tensor(k)
            for k in weights
            if k.startswith("model.diffusion_model.")
        }
    save_file(tensors, str(path))
    with (
        pytest.raises(UserError, match="holds its UNet only as an EMA copy"),
        open_conversion_source(path, config="tiny:sd15"),
    ):
        pass
