from __future__ import annotations

import datetime as dt
import json
import math
import os
from pathlib import Path

import pytest
import torch
from safetensors import SafetensorError, safe_open

from onetrainer.util import safetensors_meta
from onetrainer.util.atomic import save_safetensors
from onetrainer.util.errors import UserError
from onetrainer.util.family import FamilySpec, get_family
from onetrainer.util.safetensors_meta import (
    HeaderError,
    modelspec_architecture,
    modelspec_metadata,
    read_safetensors_header,
    ss_metadata,
)


@pytest.mark.parametrize(
    ("family", "prediction", "adapter", "expected"),
    [
        ("sd15", "epsilon", None, "stable-diffusion-v1"),
        ("sd15", "v_prediction", None, "stable-diffusion-v1"),
        ("sd2", "epsilon", None, "stable-diffusion-v2-512"),
        ("sd2", None, None, "stable-diffusion-v2-512"),
        ("sd2", "v_prediction", None, "stable-diffusion-v2-768-v"),
        ("sd15", None, "lora", "stable-diffusion-v1/lora"),
        ("sd2", "v_prediction", "embedding", "stable-diffusion-v2-768-v/textual-inversion"),
    ],
)
def test_architecture_strings(family: str, prediction: str | None, adapter: str | None, expected: str) -> None:
    assert modelspec_architecture(get_family(family), prediction_type=prediction, adapter=adapter) == expected


def test_another_familys_strings_come_from_its_spec(fake_family: FamilySpec) -> None:
    assert modelspec_architecture(fake_family, adapter="embedding") == "test-dit-v1/textual-inversion"
    meta = modelspec_metadata(spec=fake_family, title="t", adapter="lora")
    assert meta["modelspec.resolution"] == "1024x1024"
    assert meta["modelspec.implementation"] == "https://github.com/Stability-AI/generative-models"
    assert "modelspec.prediction_type" not in meta
    ss = ss_metadata(spec=fake_family, prediction_type="v_prediction")
    assert (ss["ss_base_model_version"], ss["ss_v2"]) == ("test_dit", "False")


def test_modelspec_holds_the_required_keys_and_strings_only() -> None:
    date = dt.datetime(2025, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc)
    meta = modelspec_metadata(
        spec=get_family("sd2"),
        title="cats",
        prediction_type="v_prediction",
        adapter="lora",
        date=date,
        trigger_phrase="a cat",
        author=None,
    )
    assert meta == {
        "modelspec.sai_model_spec": "1.0.0",
        "modelspec.architecture": "stable-diffusion-v2-768-v/lora",
        "modelspec.implementation": "diffusers",
        "modelspec.title": "cats",
        "modelspec.resolution": "768x768",
        "modelspec.date": "2025-01-02T03:04:05+00:00",
        "modelspec.prediction_type": "v",
        "modelspec.trigger_phrase": "a cat",
    }


def test_checkpoints_name_stability_ai_as_implementation() -> None:
    meta = modelspec_metadata(
        spec=get_family("sd15"), title="t", prediction_type="epsilon", resolution=(640, 512), description="d"
    )
    assert meta["modelspec.implementation"] == "https://github.com/Stability-AI/generative-models"
    assert meta["modelspec.resolution"] == "640x512"
    assert meta["modelspec.prediction_type"] == "epsilon"
    assert meta["modelspec.description"] == "d"


def test_ss_keys_follow_sd_scripts_formatting() -> None:
    meta = ss_metadata(
        spec=get_family("sd2"),
        prediction_type="v_prediction",
        network_module="networks.lora",
        network_dim=16,
        network_alpha=8.0,
        network_args={"conv_dim": 4},
        resolution=(768, 768),
        tag_frequency={"cats": {"cat": 3}},
        seed=None,
    )
    assert meta == {
        "ss_base_model_version": "sd_v2_v",
        "ss_v2": "True",
        "ss_network_module": "networks.lora",
        "ss_network_dim": "16",
        "ss_network_alpha": "8.0",
        "ss_network_args": '{"conv_dim": 4}',
        "ss_resolution": "(768, 768)",
        "ss_tag_frequency": '{"cats": {"cat": 3}}',
    }
    assert ss_metadata(spec=get_family("sd15"), prediction_type="epsilon")["ss_base_model_version"] == "sd_v1"
    assert ss_metadata(spec=get_family("sd15"), prediction_type="v_prediction")["ss_base_model_version"] == "sd_v1_v"
    assert ss_metadata(spec=get_family("sd15"))["ss_v2"] == "False"


def test_unknown_ss_key_is_refused() -> None:
    with pytest.raises(UserError, match="network_dimm"):
        ss_metadata(spec=get_family("sd15"), network_dimm=4)


def test_header_matches_safetensors_and_metadata_survives(tmp_path: Path) -> None:
    path = tmp_path / "m.safetensors"
    tensors = {"a": torch.zeros(2, 3, dtype=torch.float16), "b": torch.zeros((), dtype=torch.float32)}
    meta = modelspec_metadata(spec=get_family("sd15"), title="x")
    save_safetensors(tensors, path, meta)
    metadata, header = read_safetensors_header(path)
    assert metadata == meta
    assert header == {"a": ("F16", (2, 3)), "b": ("F32", ())}


def test_header_is_read_without_touching_tensor_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "big.safetensors"
    save_safetensors({"w": torch.zeros(1024, 1024)}, path)
    length = int.from_bytes(path.read_bytes()[:8], "little")
    read = []

    class Spy:
        def __init__(self, handle) -> None:
            self.handle = handle

        def __enter__(self):
            return self

        def __exit__(self, *exc) -> None:
            self.handle.close()

        def fileno(self) -> int:
            return self.handle.fileno()

        def read(self, size: int) -> bytes:
            read.append(size)
            return self.handle.read(size)

    monkeypatch.setattr(safetensors_meta, "open", lambda *a: Spy(open(*a)), raising=False)  # noqa: SIM115 (Spy closes it)
    assert read_safetensors_header(path)[1] == {"w": ("F32", (1024, 1024))}
    assert sum(read) == 8 + length


def _raw_file(path: Path, header: dict, data: bytes) -> Path:
    raw = json.dumps(header).encode()
    path.write_bytes(len(raw).to_bytes(8, "little") + raw + data)
    return path


def _f32(shape: list[int], start: int) -> dict:
    return {"dtype": "F32", "shape": shape, "data_offsets": [start, start + 4 * math.prod(shape)]}


@pytest.mark.parametrize(
    ("header", "data_bytes", "message"),
    [
        ({"emb_params": _f32([1000, 1000], 0)}, 60, "truncated: its header describes 4,000,000 bytes"),
        ({"a": _f32([2], 0)}, 12, "12 bytes follow the header but it describes only 8"),
        ({"a": _f32([1], 0), "b": _f32([1], 8)}, 12, "tensor b starts at byte 8 of the data, expected 4"),
        ({"a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, 8, "does not fill data_offsets"),
        ({"a": {"dtype": "F33", "shape": [2], "data_offsets": [0, 8]}}, 8, "unknown dtype"),
        ({"a": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}}, 8, "non-negative"),
        ({"__metadata__": {"n": 1}, "a": _f32([2], 0)}, 8, "not a map of strings"),
    ],
    ids=["past-the-end", "extra-bytes", "gap", "size-mismatch", "dtype", "negative-shape", "metadata"],
)
def test_offsets_are_checked_against_the_file_as_the_library_does(
    tmp_path: Path, header: dict, data_bytes: int, message: str
) -> None:
    path = _raw_file(tmp_path / "lie.safetensors", header, bytes(data_bytes))
    with pytest.raises(HeaderError, match=message):
        read_safetensors_header(path)
    with pytest.raises(SafetensorError), safe_open(str(path), "np"):
        pass


def test_tensors_in_any_offset_order_and_sub_byte_dtypes_are_valid(tmp_path: Path) -> None:
    header = {"b": _f32([1], 4), "a": _f32([1], 0), "f4": {"dtype": "F4", "shape": [2], "data_offsets": [8, 9]}}
    path = _raw_file(tmp_path / "ok.safetensors", header, bytes(9))
    with safe_open(str(path), "np") as handle:
        assert sorted(handle.keys()) == ["a", "b", "f4"]
    assert read_safetensors_header(path)[1] == {"a": ("F32", (1,)), "b": ("F32", (1,)), "f4": ("F4", (2,))}


def test_a_truncated_file_is_refused_with_a_hint(tmp_path: Path) -> None:
    path = tmp_path / "cut.safetensors"
    save_safetensors({"w": torch.zeros(64, 64)}, path)
    os.truncate(path, path.stat().st_size // 2)
    with pytest.raises(HeaderError, match="truncated") as caught:
        read_safetensors_header(path)
    assert "interrupted download" in (caught.value.hint or "")


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"\x05\x00",
        (10**9).to_bytes(8, "little") + b"{}",
        (2).to_bytes(8, "little") + b"\xff\xfe",
        b"\x02" + bytes(7) + b"[]",
    ],
)
def test_broken_files_raise_a_header_error(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "broken.safetensors"
    path.write_bytes(content)
    with pytest.raises(HeaderError):
        read_safetensors_header(path)


@pytest.mark.parametrize(
    ("architecture", "prediction"),
    [
        ("stable-diffusion-v2-512", "epsilon"),
        ("stable-diffusion-v2-512/lora", "epsilon"),
        ("stable-diffusion-v2-768-v", "v_prediction"),
    ],
)
def test_an_sd2_architecture_names_its_prediction_type(architecture: str, prediction: str) -> None:
    """Without `modelspec.prediction_type`, the architecture is what tells the 512 epsilon model from the 768 v one."""
    from onetrainer.util.family import by_modelspec_architecture

    found = by_modelspec_architecture(architecture)
    assert found is not None
    assert (found[0].name, found[1]) == ("sd2", prediction)
