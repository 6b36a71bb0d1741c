"""`parse_model_type` and `source_model_type`: the family of a base model, named or detected."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from onetrainer.model_loader.family import bucket_step, parse_model_type, source_model_type
from onetrainer.util import registry
from onetrainer.util.atomic import save_safetensors
from onetrainer.util.errors import UserError
from onetrainer.util.missing import ModelUnavailable
from onetrainer.util.registry import ModuleKind, supported, supporting

SAMPLE = (ModuleKind.LOADER, ModuleKind.SAMPLER)


def test_parse_model_type_keeps_none_and_reads_names() -> None:
    assert parse_model_type(None, needs=SAMPLE) is None
    assert parse_model_type("sd2", needs=SAMPLE) == "sd2"


def test_parse_model_type_suggests_the_closest_name() -> None:
    with pytest.raises(UserError, match="unknown model type 'sd16'; did you mean 'sd15'") as caught:
        parse_model_type("sd16", needs=SAMPLE)
    assert caught.value.where == "--model-type"


def test_the_accepted_types_are_those_registered_with_every_needed_module(monkeypatch: pytest.MonkeyPatch) -> None:
    """A registered family without a sampler is refused by `sample`, with the usable list."""
    registry.discover()
    monkeypatch.delitem(registry._registry, (ModuleKind.SAMPLER, "sd2"))
    usable = supporting(SAMPLE)
    assert usable == sorted(set(supported(ModuleKind.LOADER)) & set(supported(ModuleKind.SAMPLER)))
    assert "sd2" not in usable
    assert "sd15" in usable
    with pytest.raises(UserError, match="'sd2' is not supported by this command") as caught:
        parse_model_type("sd2", needs=SAMPLE)
    assert ", ".join(usable) in (caught.value.hint or "")


def test_source_model_type_prefers_the_explicit_name() -> None:
    assert source_model_type("tiny:sd15", "sd2", needs=SAMPLE) == "sd2"


def test_source_model_type_reads_tiny_names() -> None:
    assert source_model_type("tiny:sd2-v", needs=SAMPLE) == "sd2"


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


def test_bucket_step_comes_from_the_family_spec() -> None:
    assert bucket_step("sd15") == bucket_step("sd2") == 8
