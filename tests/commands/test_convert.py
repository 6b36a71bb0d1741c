"""`onetrainer convert` through the CLI: every format pair we support, and every bad input's exit code."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from typer.testing import CliRunner

from onetrainer.commands.app import app
from onetrainer.model.adapters.embedding import read_embedding_file
from onetrainer.model.adapters.lora_file import read_lora_file
from onetrainer.model_loader.pipeline import load_model
from onetrainer.util.detect import detect_path
from onetrainer.util.family import get_family

runner = CliRunner()
SD15 = get_family("sd15")


def convert(*args: object) -> object:
    return runner.invoke(app, ["convert", *map(str, args)])


def said(result: object) -> str:
    """The output with the error panel's borders and line wrapping removed."""
    return " ".join(result.output.replace("│", " ").split())


def _tensors(path: Path) -> dict[str, torch.Tensor]:
    with safe_open(str(path), "pt") as handle:
        return {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118


@pytest.fixture(scope="module")
def sd15_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("convert") / "tiny-sd15.safetensors"
    result = convert("tiny:sd15", path)
    assert result.exit_code == 0, result.output
    return path


@pytest.fixture(scope="module")
def kohya_lora(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from onetrainer.model.adapters.lora import LoraTargets, inject_lora
    from onetrainer.model_saver.diffusion import DiffusionSaver
    from onetrainer.util.enums import TrainingMethod

    model = load_model("tiny:sd15")
    targets = {name: LoraTargets(presets=SD15.component(name).lora_presets) for name in ("unet", "text_encoder")}
    model.adapters.lora = inject_lora(model, kind="lora", rank=4, alpha=2, targets=targets)
    for component in (model.unet, model.text_encoder):
        for name, parameter in component.named_parameters():
            if "lora_B" in name:
                parameter.data = torch.randn(parameter.shape, generator=torch.Generator().manual_seed(0))
    path = tmp_path_factory.mktemp("convert") / "style.safetensors"
    DiffusionSaver().save(model, path, method=TrainingMethod.LORA, dtype=None)
    return path


def test_tiny_model_to_single_file_by_suffix(sd15_file: Path) -> None:
    detected = detect_path(sd15_file)
    assert (detected.kind, detected.layout, detected.family) == ("model", "single-file", "sd15")


def test_single_file_to_diffusers_and_back_is_exact(sd15_file: Path, tiny_sd15_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "pipeline"
    result = convert(sd15_file, folder, "--to", "diffusers", "--config", tiny_sd15_dir)
    assert result.exit_code == 0, result.output
    assert "wrote" in result.stdout
    original, converted = load_model("tiny:sd15"), load_model(folder)
    for component in ("unet", "vae", "text_encoder"):
        a, b = getattr(original, component).state_dict(), getattr(converted, component).state_dict()
        assert all(torch.equal(a[key], b[key]) for key in a), component
    # the architecture's pipeline settings are kept, so diffusers does not warn about a missing safety checker
    assert json.loads((folder / "model_index.json").read_text())["requires_safety_checker"] is False
    back = tmp_path / "back.safetensors"
    assert convert(folder, back).exit_code == 0
    assert _tensors(back).keys() == _tensors(sd15_file).keys()
    assert all(torch.equal(_tensors(back)[k], t) for k, t in _tensors(sd15_file).items())


def test_dtype_option_casts_every_float(sd15_file: Path, tmp_path: Path) -> None:
    output = tmp_path / "half.safetensors"
    assert convert(sd15_file, output, "--dtype", "bf16").exit_code == 0
    assert {t.dtype for t in _tensors(output).values() if t.is_floating_point()} == {torch.bfloat16}


def test_lora_kohya_to_peft_and_back(kohya_lora: Path, tmp_path: Path, lora_deltas: Callable) -> None:
    peft, back = tmp_path / "peft.safetensors", tmp_path / "back.safetensors"
    assert convert(kohya_lora, peft, "--to", "peft").exit_code == 0
    assert all(key.startswith(("unet.", "text_encoder.")) for key in _tensors(peft))
    assert convert(peft, back, "--to", "kohya").exit_code == 0
    original, restored = read_lora_file(kohya_lora, SD15), read_lora_file(back, SD15)
    assert _tensors(back).keys() == _tensors(kohya_lora).keys()
    # the peft file carries each scale in lora_B (alpha = rank), so the round trip keeps the weights, not alphas
    ours, again = lora_deltas(original.tensors, original.alphas), lora_deltas(restored.tensors, restored.alphas)
    assert all(torch.allclose(again[module], delta, rtol=1e-6, atol=0) for module, delta in ours.items())


def test_a_converted_file_keeps_its_sources_header_but_not_its_hashes(kohya_lora: Path, tmp_path: Path) -> None:
    """A1111 trusts `sshs_model_hash` over hashing the file: a copy sharing it is looked up as its source."""
    tensors = _tensors(kohya_lora)
    with safe_open(str(kohya_lora), "pt") as handle:
        header = dict(handle.metadata())
    hashes = {
        "sshs_model_hash": "deadbeef" * 8,
        "sshs_legacy_hash": "12345678",
        "modelspec.hash_sha256": "0x" + "ab" * 32,
    }
    source = tmp_path / "hashed.safetensors"
    save_file(tensors, source, metadata={**header, **hashes, "ss_training_comment": "kept"})
    output = tmp_path / "fp16.safetensors"
    assert convert(source, output, "--dtype", "fp16").exit_code == 0
    with safe_open(str(output), "pt") as handle:
        written = handle.metadata()
    assert written["ss_training_comment"] == "kept"
    assert not hashes.keys() & written.keys()


def test_embedding_a1111_to_diffusers_uses_the_file_name_as_token(tmp_path: Path) -> None:
    a1111 = tmp_path / "my-cat.safetensors"
    vectors = torch.randn(2, 32)
    save_file({"emb_params": vectors}, str(a1111))
    output = tmp_path / "learned_embeds.safetensors"
    result = convert(a1111, output, "--to", "diffusers", "--model-type", "sd15")
    assert result.exit_code == 0, result.output
    assert list(_tensors(output)) == ["my-cat"]
    assert torch.equal(read_embedding_file(output, SD15)["text_encoder"], vectors)


def test_existing_output_needs_overwrite(sd15_file: Path, tmp_path: Path) -> None:
    output = tmp_path / "copy.safetensors"
    output.write_bytes(b"keep me")
    result = convert(sd15_file, output)
    assert result.exit_code == 2
    assert "already exists" in said(result)
    assert output.read_bytes() == b"keep me"
    assert convert(sd15_file, output, "--overwrite").exit_code == 0


def test_overwrite_never_replaces_the_input_or_a_folder_of_other_files(sd15_file: Path, tmp_path: Path) -> None:
    folder = tmp_path / "mine"
    folder.mkdir()
    inside = folder / "model.safetensors"
    inside.write_bytes(sd15_file.read_bytes())
    (folder / "notes.txt").write_text("mine")
    result = convert(inside, folder, "--to", "diffusers", "--overwrite")
    assert result.exit_code == 2, result.output
    assert "which it converts from" in said(result)
    result = convert(sd15_file, folder, "--to", "diffusers", "--overwrite")
    assert result.exit_code == 2, result.output
    assert "holds what a diffusers model does not" in said(result)
    assert (folder / "notes.txt").read_text() == "mine"
    assert inside.read_bytes() == sd15_file.read_bytes()
    result = convert(sd15_file, tmp_path / "model.ckpt")
    assert result.exit_code == 2, result.output
    assert "not as .ckpt" in said(result)
    assert not (tmp_path / "model.ckpt").exists()


@pytest.mark.parametrize(
    ("to", "message"), [("diffusers", "use --to peft"), ("single-file", "not a full model"), ("a1111", "not a format")]
)
def test_impossible_lora_conversions_exit_2(kohya_lora: Path, tmp_path: Path, to: str, message: str) -> None:
    result = convert(kohya_lora, tmp_path / "out.safetensors", "--to", to)
    assert result.exit_code == 2
    assert message in said(result)


def test_unknown_format_and_model_type_exit_2(sd15_file: Path, tmp_path: Path) -> None:
    result = convert(sd15_file, tmp_path / "x.safetensors", "--to", "singlefile")
    assert result.exit_code == 2
    assert "did you mean 'single-file'" in said(result)
    result = convert(sd15_file, tmp_path / "x.safetensors", "--model-type", "zeta")
    assert result.exit_code == 2
    assert "unknown model type" in said(result)


def test_missing_corrupt_and_unsafe_inputs_exit_2(tmp_path: Path) -> None:
    missing = said(convert(tmp_path / "missing.safetensors", tmp_path / "o.safetensors"))
    assert "file or folder not found" in missing
    assert "where: the INPUT argument" in missing
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    assert convert(corrupt, tmp_path / "o.safetensors").exit_code == 2
    pickle = tmp_path / "unsafe.ckpt"
    torch.save({"state_dict": {"w": torch.ones(1)}, "args": argparse.Namespace(lr=1)}, pickle)
    result = convert(pickle, tmp_path / "o.safetensors")
    assert result.exit_code == 2
    assert "would run code stored in the file" in said(result)
    assert "weights_only" not in said(result)


def test_lora_for_another_architecture_says_which(tmp_path: Path, kohya_lora: Path) -> None:
    sdxl = tmp_path / "xl.safetensors"
    save_file({"lora_te2_text_model_encoder_layers_0_mlp_fc1.lora_down.weight": torch.zeros(4, 1280)}, str(sdxl))
    result = convert(sdxl, tmp_path / "o.safetensors", "--to", "peft", "--model-type", "sd15")
    assert result.exit_code == 2
    assert "is a LoRA for SDXL (LoRA for two text encoders), not for SD 1.x" in said(result)
    flux = tmp_path / "flux.safetensors"  # BFL module names: FLUX.1, dev or schnell
    save_file({"lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight": torch.zeros(4, 3072)}, str(flux))
    result = convert(flux, tmp_path / "o.safetensors", "--to", "peft", "--model-type", "sd15")
    assert result.exit_code == 2
    assert "flux.safetensors is a LoRA for FLUX.1-dev/FLUX.1-schnell (FLUX.1 LoRA" in said(result)
    assert "not for SD 1.x" in said(result)
    zeta = tmp_path / "zeta.safetensors"  # a made-up transformer: no family has these blocks
    save_file({"lora_unet_zeta_blocks_0_attn_qkv.lora_down.weight": torch.zeros(4, 3072)}, str(zeta))
    result = convert(zeta, tmp_path / "o.safetensors", "--to", "peft")
    assert result.exit_code == 2
    assert "cannot tell which model family zeta.safetensors is (kohya lora of no known family)" in said(result)
    result = convert(kohya_lora, tmp_path / "o.safetensors", "--to", "peft", "--model-type", "sd2")
    assert result.exit_code == 2
    assert "for SD 1.x" in said(result)


def test_single_file_without_reachable_tokenizer_or_matching_config_exits_2(
    sd15_file: Path, tmp_path: Path, tiny_sd15_dir: Path
) -> None:
    result = convert(sd15_file, tmp_path / "a", "--to", "diffusers", "--tokenizer", tiny_sd15_dir)
    assert result.exit_code == 2
    assert "does not match the shipped sd15 config" in said(result)
    architecture = tmp_path / "architecture"
    for part in ("unet", "vae", "text_encoder", "scheduler"):
        (architecture / part).mkdir(parents=True)
        for file in (tiny_sd15_dir / part).glob("*.json"):
            (architecture / part / file.name).write_text(file.read_text())
    result = convert(sd15_file, tmp_path / "b", "--to", "diffusers", "--config", architecture)
    assert result.exit_code == 2
    assert "no tokenizer is reachable" in said(result)
    assert not (tmp_path / "a").exists()
    assert not (tmp_path / "b").exists()


def test_weights_only_ckpt_converts_to_safetensors(sd15_file: Path, tmp_path: Path) -> None:
    ckpt = tmp_path / "model.ckpt"
    torch.save({"state_dict": _tensors(sd15_file), "global_step": 10}, ckpt)
    output = tmp_path / "model.safetensors"
    result = convert(ckpt, output)
    assert result.exit_code == 0, result.output
    assert all(torch.equal(_tensors(output)[k], t) for k, t in _tensors(sd15_file).items())


def test_unknown_prediction_type_is_not_invented(tmp_path: Path) -> None:
    tagged = tmp_path / "tagged.safetensors"
    assert convert("tiny:sd2-v", tagged).exit_code == 0
    bare = tmp_path / "bare.safetensors"
    save_file({k: t for k, t in _tensors(tagged).items() if k != "v_pred"}, str(bare))
    output = tmp_path / "out.safetensors"
    assert convert(bare, output, "--dtype", "fp16").exit_code == 0
    with safe_open(str(output), "pt") as handle:
        assert "v_pred" not in handle.keys()  # noqa: SIM118
        assert "modelspec.architecture" not in (handle.metadata() or {})


def test_uncached_hub_model_offline_exits_2(tmp_path: Path) -> None:
    result = convert("onetrainer-test/no-such-model", tmp_path / "o.safetensors")
    assert result.exit_code == 2
    assert "'onetrainer-test/no-such-model' is not on this machine" in said(result)
    assert "where: the INPUT argument" in said(result)


def test_diffusers_lora_folder_is_read_through_its_weights_file(kohya_lora: Path, tmp_path: Path) -> None:
    folder = tmp_path / "diffusers-lora"
    assert convert(kohya_lora, folder / "pytorch_lora_weights.safetensors", "--to", "peft").exit_code == 0
    output = tmp_path / "kohya.safetensors"
    result = convert(folder, output)
    assert result.exit_code == 0, result.output
    assert _tensors(output).keys() == _tensors(kohya_lora).keys()


def test_an_output_that_cannot_be_written_is_refused_before_reading_the_input(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the output folder should be")
    result = convert("onetrainer-test/no-such-model", blocker / "out.safetensors")
    assert result.exit_code == 2
    assert f"{blocker} is a file, not a folder" in said(result)
    assert "where: the OUTPUT argument" in said(result)


def test_a_failing_disk_exits_1(kohya_lora: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A write that fails after the early check (a full disk, say) is a runtime failure."""
    monkeypatch.setattr("onetrainer.util.writable.check_writable", lambda *_, **__: None)
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the output folder should be")
    result = convert(kohya_lora, blocker / "out.safetensors")
    assert result.exit_code == 1
    assert "could not write" in said(result)


@pytest.mark.parametrize(("prediction", "architecture"), [("v_prediction", "768-v"), ("epsilon", "512")])
def test_prediction_type_option_says_what_an_unmarked_file_predicts(
    tmp_path: Path, prediction: str, architecture: str
) -> None:
    tagged = tmp_path / "tagged.safetensors"
    assert convert("tiny:sd2-v", tagged).exit_code == 0
    bare = tmp_path / "bare.safetensors"
    save_file({k: t for k, t in _tensors(tagged).items() if k != "v_pred"}, str(bare))
    output = tmp_path / "out.safetensors"
    result = convert(bare, output, "--prediction-type", prediction)
    assert result.exit_code == 0, result.output
    with safe_open(str(output), "pt") as handle:
        assert ("v_pred" in handle.keys()) is (prediction == "v_prediction")  # noqa: SIM118
        assert handle.metadata()["modelspec.architecture"] == f"stable-diffusion-v2-{architecture}"
    assert detect_path(output).prediction_type == prediction


def test_prediction_type_option_rejects_other_values(sd15_file: Path, tmp_path: Path) -> None:
    result = convert(sd15_file, tmp_path / "o.safetensors", "--prediction-type", "flow")
    assert result.exit_code == 2
    assert "v_prediction" in said(result)
