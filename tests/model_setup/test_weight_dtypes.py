"""Every weight dtype of frozen parts, for every registered family: it trains, it is stored as stated, and
a LoRA trained on it is an ordinary LoRA that loads on the unquantised base."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from onetrainer.model.diffusion import DiffusionModel
from onetrainer.model.quantised import linear_storage, quantised_values, storage_bytes
from onetrainer.model_saver.diffusion import DiffusionSaver
from onetrainer.model_setup.diffusion import DiffusionSetup
from onetrainer.model_setup.placement import kept_in_fp32
from onetrainer.util.config.loader import validate
from onetrainer.util.enums import TrainingMethod
from onetrainer.util.errors import ConfigError
from onetrainer.util.family import Role, families

DTYPES = ("fp32", "bf16", "fp16", "fp8", "int8", "nf4")
TINY = sorted((spec.name, sorted(spec.tiny)[0]) for spec in families() if spec.tiny)
VALUES = {"fp8": torch.float8_e4m3fn, "int8": torch.int8, "nf4": torch.uint8}
FLOATS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@pytest.fixture
def make_setup(
    tiny_base: Callable[[str], DiffusionModel], tiny_setup: Callable[..., DiffusionSetup]
) -> Callable[..., DiffusionSetup]:
    """`make_setup(family, tiny, dtype, **config)`: a LoRA on the denoiser and the text encoders, every trained
    part's frozen weights stored as `dtype`."""

    def make(family: str, tiny: str, dtype: str, **config: Any) -> DiffusionSetup:
        trainable = [c.name for c in tiny_base(tiny).spec.components if c.trainable]
        parts = {name: {"train": True, "weight_dtype": dtype} for name in trainable}
        settings = {"method": "lora", "lora": {"rank": 4, "targets": "attn-mlp"}, "parts": parts, **config}
        return tiny_setup(family, tiny, **settings)

    return make


@pytest.fixture
def train(adamw_losses: Callable[..., list[float]]) -> Callable[..., list[float]]:
    """`train(setup, steps, autocast=torch.bfloat16)`: `steps` AdamW steps on one batch with the same noise each
    time: the loss must fall."""

    def run(setup: DiffusionSetup, steps: int, autocast: torch.dtype = torch.bfloat16) -> list[float]:
        return adamw_losses(setup, steps, lr=2e-2, noise_seed=7, autocast=autocast)

    return run


def _expected_bytes(dtype: str, rows: int, columns: int) -> int:
    """What a frozen linear weight of this shape must occupy, from the format's definition."""
    count = rows * columns
    if dtype == "fp8":
        return count + 4 * rows  # e4m3 values, an fp32 scale per row
    if dtype == "int8":
        return count + 5 * rows  # int8 values, an fp32 scale and an int8 zero point per row
    if dtype == "nf4":
        blocks = math.ceil(count / 64)
        # 4-bit values, an 8-bit scale per 64, the NF4 code (16 fp32), the scales' offset, an fp32 scale per
        # 256 scales and their 8-bit code (256 fp32)
        return count // 2 + blocks + 16 * 4 + 4 + 4 * math.ceil(blocks / 256) + 256 * 4
    return count * FLOATS[dtype].itemsize


def _frozen_linears(module: torch.nn.Module) -> list[torch.nn.Module]:
    return [
        child
        for child in module.modules()
        if isinstance(child, torch.nn.Linear) and not child.weight.requires_grad and child.weight.dim() in (1, 2)
    ]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("family", "tiny"), TINY)
def test_a_lora_trains_on_frozen_weights_stored_as_stated(
    family: str, tiny: str, dtype: str, make_setup: Callable[..., DiffusionSetup], train: Callable[..., list[float]]
) -> None:
    setup = make_setup(family, tiny, dtype)
    losses = train(setup, steps=5, autocast=torch.float16 if dtype == "fp16" else torch.bfloat16)
    assert all(math.isfinite(loss) for loss in losses)
    assert losses[-1] < losses[0], losses
    for component in (c for c in setup.spec.components if c.role is not Role.VAE):
        module = setup.model.components[component.name]
        linears = _frozen_linears(module)
        assert linears, component.name
        kept = {id(layer) for layer in kept_in_fp32(module)} if dtype == "fp16" else set()  # T5's `wo`
        for layer in linears:
            weight = layer.weight
            assert linear_storage(layer) == (dtype if dtype in VALUES else None)
            if dtype in VALUES:
                assert quantised_values(weight).dtype == VALUES[dtype]
                rows, columns = layer.out_features, layer.in_features
            else:
                assert weight.dtype == (torch.float32 if id(layer) in kept else FLOATS[dtype])
                rows, columns = weight.shape
            assert storage_bytes(weight) == _expected_bytes("fp32" if id(layer) in kept else dtype, rows, columns)
        trained = setup.trainables.parameters(component.name)
        assert trained
        assert all(param.dtype == torch.float32 for param in trained), "adapters train in fp32"


@pytest.mark.slow
@pytest.mark.parametrize("dtype", ["fp8", "int8", "nf4"])
def test_a_lora_trained_on_quantised_weights_loads_on_the_unquantised_base(
    dtype: str,
    tiny_sd15_dir: Path,
    tmp_path: Path,
    make_setup: Callable[..., DiffusionSetup],
    train: Callable[..., list[float]],
) -> None:
    from diffusers import StableDiffusionPipeline
    from peft import get_peft_model_state_dict
    from safetensors.torch import load_file

    setup = make_setup("sd15", "sd15", dtype)
    train(setup, steps=3)
    path = tmp_path / "lora.safetensors"
    DiffusionSaver().save(setup.model, path, method=TrainingMethod.LORA, format="kohya", dtype="fp32")
    written = load_file(path)
    assert all(tensor.dtype == torch.float32 for tensor in written.values()), "no quantised tensors"
    assert not [key for key in written if any(mark in key for mark in ("absmax", "quant", "qdata", "scale"))]

    pipe = StableDiffusionPipeline.from_pretrained(tiny_sd15_dir, local_files_only=True, safety_checker=None)
    pipe.load_lora_weights(str(path.parent), weight_name=path.name)
    ours = setup.lora.state_dicts(setup.model)
    for component in ("unet", "text_encoder"):
        module = getattr(pipe, component)
        theirs = get_peft_model_state_dict(module, adapter_name=next(iter(module.peft_config)))
        mine = {key.replace(".default", ""): value for key, value in ours[component].items()}
        assert set(theirs) == set(mine), component
        for key, value in mine.items():
            assert torch.equal(theirs[key].float(), value.float()), key


@pytest.mark.parametrize("dtype", ["fp8", "int8", "nf4"])
def test_frozen_quantised_text_encoders_encode_for_the_cache_under_their_own_identity(
    dtype: str, tiny_setup: Callable[..., DiffusionSetup]
) -> None:
    def frozen_text_encoder(stored: str) -> Any:
        """The conditioner that fills the cache, with the (frozen) text encoder stored as `stored`."""
        parts = {"text_encoder": {"weight_dtype": stored}}
        return tiny_setup("sd15", "sd15", train_dtype=torch.bfloat16, parts=parts).text_encoder()

    plain, quantised = frozen_text_encoder("bf16"), frozen_text_encoder(dtype)
    assert plain.identity() != quantised.identity()
    encoded = quantised.encode(["a red circle"])
    assert all(torch.isfinite(value.float()).all() for value in encoded.values())


def test_quantised_storage_is_refused_where_it_cannot_work() -> None:
    base = {"model": {"type": "sd15", "base": "tiny:sd15"}}
    with pytest.raises(ConfigError) as vae:
        validate({**base, "parts": {"vae": {"weight_dtype": "fp8"}}}, check_paths=False)
    assert "the VAE is convolutions" in str(vae.value)
    with pytest.raises(ConfigError) as full:
        validate({**base, "method": "full", "parts": {"unet": {"weight_dtype": "int8"}}}, check_paths=False)
    assert "frozen, weight-only format" in str(full.value)
    with pytest.raises(ConfigError) as lycoris:
        validate({**base, "lora": {"type": "loha"}, "parts": {"unet": {"weight_dtype": "nf4"}}}, check_paths=False)
    assert "loha" in str(lycoris.value)


@pytest.mark.parametrize(("dtype", "library"), [("fp8", "torchao"), ("int8", "torchao"), ("nf4", "bitsandbytes")])
def test_a_missing_quantisation_library_is_a_user_error_naming_the_extra(
    dtype: str, library: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sys

    from onetrainer.model.quantised import require_library
    from onetrainer.util.errors import UserError

    monkeypatch.setitem(sys.modules, library, None)
    with pytest.raises(UserError) as missing:
        require_library(dtype)
    assert library in missing.value.message
    assert 'pip install "onetrainer[quant]"' in (missing.value.hint or "")


@pytest.mark.parametrize(
    ("kind", "dtype"),
    [
        (kind, dtype)
        for kind in ("dora", "loha", "lokr")
        for dtype in ("fp8", "int8", "nf4")
        if (kind, dtype) not in (("loha", "nf4"), ("lokr", "nf4"))
    ],
)
def test_lora_relatives_wrap_quantised_layers_and_train(
    kind: str, dtype: str, make_setup: Callable[..., DiffusionSetup], train: Callable[..., list[float]]
) -> None:
    from peft.tuners.tuners_utils import BaseTunerLayer

    setup = make_setup("sd15", "sd15", dtype, lora={"rank": 4, "type": kind, "targets": "attn-mlp"})
    unet = setup.model.components["unet"]
    bases = [module.get_base_layer() for module in unet.modules() if isinstance(module, BaseTunerLayer)]
    linears = [base for base in bases if isinstance(base, torch.nn.Linear)]  # (convolutions stay unquantised)
    assert linears
    assert all(linear_storage(base) == dtype for base in linears)
    losses = train(setup, steps=3)
    assert all(math.isfinite(loss) for loss in losses)
    assert losses[-1] < losses[0], losses
