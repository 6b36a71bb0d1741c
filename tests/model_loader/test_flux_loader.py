"""Loading FLUX.1: diffusers folders and hub ids, and BFL's transformer file with the rest from `model.config`."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from onetrainer.inspection.dispatch import inspect_path
from onetrainer.model.diffusion import DiffusionModel
from onetrainer.model_loader.pipeline import detect_model_type, load_model
from onetrainer.util.errors import UserError
from onetrainer.util.registry import ModuleKind, lookup

REPO = "onetrainer-test/tiny-flux-dev"


def _same(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    theirs = b.state_dict()
    return all(torch.equal(tensor, theirs[key]) for key, tensor in a.state_dict().items())


@pytest.fixture(scope="module")
def transformer_file(tmp_path_factory: pytest.TempPathFactory, tiny_flux_dev_dir: Path) -> Path:
    """The tiny dev model's transformer as BFL's single file, in bf16 (as BFL publish it)."""
    saver = lookup(ModuleKind.SAVER, "flux-dev")()
    path = tmp_path_factory.mktemp("flux-file") / "flux1-tiny.safetensors"
    saver.save(load_model(tiny_flux_dev_dir), path, method="full", format="single-file", dtype="bf16")
    return path


@pytest.fixture
def hub_cache(cache_hub_model: Callable[[str, Path], Path], tiny_flux_dev_dir: Path) -> Path:
    """A local Hugging Face cache holding `onetrainer-test/tiny-flux-dev`, as a download would leave it."""
    return cache_hub_model(REPO, tiny_flux_dev_dir)


def test_folders_are_told_apart_by_the_guidance_embedder(tiny_flux_dev_dir: Path, tiny_flux_schnell_dir: Path) -> None:
    assert detect_model_type(str(tiny_flux_dev_dir)) == "flux-dev"
    assert detect_model_type(str(tiny_flux_schnell_dir)) == "flux-schnell"
    with pytest.raises(UserError, match=r"is a FLUX\.1-schnell model"):
        load_model(tiny_flux_schnell_dir, model_type="flux-dev")


def test_a_cached_hub_id_loads_offline(hub_cache: Path, tiny_flux_dev_dir: Path) -> None:
    model = load_model(REPO)
    assert (model.model_type, model.source) == ("flux-dev", REPO)
    assert _same(model.transformer, load_model(tiny_flux_dev_dir).transformer)


def test_the_transformer_file_takes_the_rest_from_a_hub_id_without_its_transformer_weights(
    hub_cache: Path, transformer_file: Path, tiny_flux_dev_dir: Path
) -> None:
    """Only the parts the file lacks are read from `model.config`: its transformer weights are not needed."""
    for weights in (hub_cache / "transformer").glob("*.safetensors"):
        weights.unlink()
    model = load_model(transformer_file, config=REPO, dtype="bf16")
    base = load_model(tiny_flux_dev_dir, dtype="bf16")
    assert all(param.dtype == torch.bfloat16 for _, module in model.modules() for param in module.parameters())
    for name in ("transformer", "text_encoder", "text_encoder_2", "vae"):
        assert _same(model.components[name], base.components[name]), name
    assert len(model.tokenizer_2) == len(base.tokenizer_2)


def _comfy_checkpoint(transformer_file: Path, base: DiffusionModel, parts: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """A ComfyUI checkpoint of `base` (as its CheckpointSave writes FLUX.1) holding the transformer and `parts`."""
    from onetrainer.util.keymaps.engine import KeyTable, convert
    from onetrainer.util.keymaps.ldm_tables import vae_layout, vae_rows

    tensors = {f"model.diffusion_model.{key}": value for key, value in load_file(transformer_file).items()}
    if "vae" in parts:
        vae = {f"vae.{key}": tensor for key, tensor in base.vae.state_dict().items()}
        tensors |= convert(KeyTable(vae_rows(vae_layout(vae, diffusers=True), dst="vae.")), vae)
    if "text_encoder" in parts:
        clip = "text_encoders.clip_l."
        for key, tensor in base.text_encoder.state_dict().items():
            tensors[f"{clip}transformer.text_model.{key.removeprefix('text_model.')}"] = tensor
        width = base.text_encoder.config.hidden_size
        tensors[f"{clip}transformer.text_projection.weight"] = torch.eye(width)  # ComfyUI's, never applied
        tensors[f"{clip}logit_scale"] = torch.tensor(4.6052)
    if "text_encoder_2" in parts:
        for key, tensor in base.text_encoder_2.state_dict().items():
            if key != "encoder.embed_tokens.weight":  # ComfyUI keeps the tied table once, as `shared`
                tensors[f"text_encoders.t5xxl.transformer.{key}"] = tensor
    return {key: tensor.contiguous() for key, tensor in tensors.items()}


def test_a_comfyui_checkpoint_loads_its_own_text_encoders_and_vae(
    transformer_file: Path, tiny_flux_dev_dir: Path, tmp_path: Path
) -> None:
    """The file's parts are the ones loaded, not `model.config`'s: here they differ from the config's."""
    base = load_model(tiny_flux_dev_dir, dtype="bf16")
    with torch.no_grad():
        for name in ("text_encoder", "text_encoder_2", "vae"):
            for param in base.components[name].parameters():
                param.add_(0.25)
    path = tmp_path / "flux1-dev-comfy.safetensors"
    save_file(_comfy_checkpoint(transformer_file, base, ("vae", "text_encoder", "text_encoder_2")), path)

    model: DiffusionModel = load_model(path, config=str(tiny_flux_dev_dir), dtype="bf16")
    for name in ("transformer", "text_encoder", "text_encoder_2", "vae"):
        assert _same(model.components[name], base.components[name]), name
    shared = model.text_encoder_2.encoder.embed_tokens.weight
    assert shared.data_ptr() == model.text_encoder_2.shared.weight.data_ptr()

    components = inspect_path(path).details["components"]  # `inspect` counts each part as its own
    assert list(components) == ["transformer", "text_encoder", "text_encoder_2", "vae", "other"]
    assert components["other"]["tensors"] == 2  # CLIP-L's unused projection and logit scale
    for name in ("text_encoder", "text_encoder_2", "vae"):
        expected = sum(p.numel() for p in base.components[name].state_dict().values())
        if name == "text_encoder_2":
            expected -= base.text_encoder_2.shared.weight.numel()  # the tied table, held once
        assert int(components[name]["parameters"]) == expected, name


def test_a_part_in_comfyuis_scaled_fp8_format_comes_from_the_config(
    transformer_file: Path, tiny_flux_dev_dir: Path, tmp_path: Path
) -> None:
    """Its fp8 weights mean nothing without their per-layer scales, so it is read as if the file lacked it."""
    base = load_model(tiny_flux_dev_dir, dtype="bf16")
    changed = load_model(tiny_flux_dev_dir, dtype="bf16")
    with torch.no_grad():
        for name in ("text_encoder", "text_encoder_2"):
            for param in changed.components[name].parameters():
                param.add_(0.25)
    tensors = _comfy_checkpoint(transformer_file, changed, ("vae", "text_encoder", "text_encoder_2"))
    t5 = "text_encoders.t5xxl."
    tensors[t5 + "scaled_fp8"] = torch.empty(0, dtype=torch.float8_e4m3fn)
    for key in [k for k in tensors if k.startswith(t5) and k.endswith("SelfAttention.q.weight")]:
        tensors[key.removesuffix("weight") + "scale_weight"] = torch.tensor(0.5)
    path = tmp_path / "flux1-dev-scaled-t5.safetensors"
    save_file(tensors, path)
    model: DiffusionModel = load_model(path, config=str(tiny_flux_dev_dir), dtype="bf16")
    assert _same(model.text_encoder_2, base.text_encoder_2), "T5 from model.config"
    assert _same(model.text_encoder, changed.text_encoder), "CLIP-L from the file"


def test_a_comfyui_checkpoint_takes_only_the_parts_it_lacks_from_the_config(
    transformer_file: Path, tiny_flux_dev_dir: Path, tmp_path: Path
) -> None:
    base = load_model(tiny_flux_dev_dir, dtype="bf16")
    path = tmp_path / "flux1-dev-comfy-vae.safetensors"
    save_file(_comfy_checkpoint(transformer_file, base, ("vae",)), path)
    model: DiffusionModel = load_model(path, config=str(tiny_flux_dev_dir), dtype="bf16")
    for name in ("transformer", "text_encoder", "text_encoder_2", "vae"):
        assert _same(model.components[name], base.components[name]), name


def test_the_rest_must_come_from_the_same_model_type(transformer_file: Path, tiny_flux_schnell_dir: Path) -> None:
    with pytest.raises(UserError, match=r"model\.config names a FLUX\.1-schnell model") as error:
        load_model(transformer_file, config=str(tiny_flux_schnell_dir))
    assert error.value.where == "model.config"


def test_bfls_vae_file_replaces_the_vae(tiny_flux_dev_dir: Path, tmp_path: Path) -> None:
    """`ae.safetensors`, as ComfyUI users keep it: the LDM VAE layout, unprefixed, without quant convs."""
    from onetrainer.util.keymaps.engine import KeyTable, convert
    from onetrainer.util.keymaps.ldm_tables import SdLayout, vae_rows

    base = load_model(tiny_flux_dev_dir)
    diffusers = {f"vae.{key}": tensor for key, tensor in base.vae.state_dict().items()}
    ldm = convert(KeyTable(vae_rows(SdLayout.from_diffusers_keys(list(diffusers)))), diffusers)
    save_file({key.removeprefix("first_stage_model."): t for key, t in ldm.items()}, tmp_path / "ae.safetensors")
    assert not any("quant_conv" in key for key in ldm)
    model = load_model(tiny_flux_dev_dir, vae=str(tmp_path / "ae.safetensors"))
    assert _same(model.vae, base.vae)
    assert (model.vae.config.shift_factor, model.vae.config.scaling_factor) == (0.1159, 0.3611)


def _padded_t5_folder(tiny_flux_dev_dir: Path, folder: Path, rows: int) -> Path:
    """The tiny model with `rows` more T5 table rows than tokens, as the released T5-XXL has (32,128 for 32,100)."""
    model = load_model(tiny_flux_dev_dir)
    model.text_encoder_2.resize_token_embeddings(len(model.tokenizer_2) + rows, mean_resizing=False)
    lookup(ModuleKind.SAVER, "flux-dev")().save(model, folder, method="full", dtype=None)
    return folder


@pytest.mark.parametrize(
    ("tokens", "rows", "fits"),
    [
        (32_100, 32_128, True),  # the released T5-XXL
        (49_408, 49_408, True),  # CLIP
        (32_000, 32_128, False),  # 128 rows short: not padding
        (2, 100, False),  # transformers' empty tokenizer of an offline miss, on a small table
        (99, 100, True),
        (32_129, 32_128, False),
    ],
)
def test_a_tokenizer_fits_a_table_padded_past_its_last_token(tokens: int, rows: int, fits: bool) -> None:
    from onetrainer.model_loader.tokenizers import tokenizer_mismatch

    class Sized:
        def __len__(self) -> int:
            return tokens

    assert (tokenizer_mismatch(Sized(), rows) is None) == fits  # type: ignore[arg-type]


def test_a_t5_table_padded_past_its_tokenizer_loads(
    tiny_flux_dev_dir: Path, transformer_file: Path, tmp_path: Path
) -> None:
    """As the released T5-XXL's (in proportion to the tiny vocabulary: one row of 122)."""
    padded = _padded_t5_folder(tiny_flux_dev_dir, tmp_path / "padded", 1)
    for model in (load_model(padded), load_model(transformer_file, config=str(padded))):
        table = model.text_encoder_2.get_input_embeddings().weight.shape[0]
        assert table == len(model.tokenizer_2) + 1
    with pytest.raises(UserError, match="came back empty or incomplete"):  # more than padding: another tokenizer
        load_model(_padded_t5_folder(tiny_flux_dev_dir, tmp_path / "far", 28))
