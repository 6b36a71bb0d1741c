"""`parse_model_type` and `source_model_type`: the family of a base model, named or detected."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from onetrainer.model_loader.family import bucket_step, parse_model_type, source_model_type, supported_types
from onetrainer.util.atomic import save_safetensors
from onetrainer.util.enums import ModelType
from onetrainer.util.errors import UserError
from onetrainer.util.missing import ModelUnavailable
from onetrainer.util.registry import ModuleKind, supported

SAMPLE = (ModuleKind.LOADER, ModuleKind.SAMPLER)


def test_parse_model_type_keeps_none_and_reads_names() -> None:
    assert parse_model_type(None, needs=SAMPLE) is None
    assert parse_model_type("sd2", needs=SAMPLE) is ModelType.SD2


def test_parse_model_type_suggests_the_closest_name() -> None:
    with pytest.raises(UserError, match="unknown model type 'sdx'; did you mean 'sdxl'") as caught:
        parse_model_type("sdx", needs=SAMPLE)
    assert caught.value.where == "--model-type"


def test_the_accepted_types_are_those_registered_with_every_needed_module() -> None:
    """A family known to the config but without a sampler is refused by `sample`, with the usable list."""
    usable = supported_types(SAMPLE)
    assert usable == sorted(set(supported(ModuleKind.LOADER)) & set(supported(ModuleKind.SAMPLER)), key=str)
    missing = [member for member in ModelType if member not in usable]
    assert missing, "every family has every module now: this test needs a family that lacks one"
    with pytest.raises(UserError, match=f"'{missing[0].value}' is not supported by this command") as caught:
        parse_model_type(missing[0].value, needs=SAMPLE)
    assert ", ".join(member.value for member in usable) in (caught.value.hint or "")


def test_source_model_type_prefers_the_explicit_name() -> None:
    assert source_model_type("tiny:sd15", "sd2", needs=SAMPLE) is ModelType.SD2


def test_source_model_type_reads_tiny_names() -> None:
    assert source_model_type("tiny:sd2-v", needs=SAMPLE) is ModelType.SD2


def test_source_model_type_refuses_a_lora(tmp_path: Path) -> None:
    lora = tmp_path / "lora.safetensors"
    save_safetensors({"lora_te1_text_model_encoder_layers_0_mlp_fc1.lora_down.weight": torch.zeros(2, 768)}, lora)
    with pytest.raises(UserError, match="not a base model"):
        source_model_type(str(lora), needs=SAMPLE)


def test_an_uncached_hub_model_is_the_one_model_unavailable_message() -> None:
    with pytest.raises(ModelUnavailable, match="'onetrainer-test/no-such-model' is not on this machine") as caught:
        source_model_type("onetrainer-test/no-such-model", needs=SAMPLE)
    assert caught.value.where == "model.base"
    assert "`hf download onetrainer-test/no-such-model`" in (caught.value.hint or "")
    assert "--model-type" not in (caught.value.hint or "")


def test_a_missing_local_path_is_not_looked_up_on_the_hub(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="not found") as caught:
        source_model_type(str(tmp_path / "nothing" / "model"), needs=SAMPLE)
    assert not isinstance(caught.value, ModelUnavailable)
    assert str(tmp_path / "nothing" / "model") in (caught.value.hint or "")


def test_bucket_step_comes_from_the_registered_setup() -> None:
    assert bucket_step(ModelType.SD15) == bucket_step(ModelType.SD2) == 8
