import pytest

from onetrainer.util import registry
from onetrainer.util.enums import ModelType
from onetrainer.util.errors import UserError
from onetrainer.util.registry import ModuleKind, lookup, register


def test_lookup_of_unregistered_family_names_the_supported_ones(monkeypatch):
    monkeypatch.setattr(registry, "_registry", {})
    monkeypatch.setattr(registry, "_discovered", True)

    @register(ModuleKind.SAVER, ModelType.SD15)
    class Saver:
        pass

    assert lookup(ModuleKind.SAVER, ModelType.SD15) is Saver
    with pytest.raises(UserError) as info:
        lookup(ModuleKind.SAVER, ModelType.SDXL)
    assert "sdxl" in info.value.message
    assert "sd15" in info.value.hint


def test_registering_two_classes_for_one_slot_is_a_bug(monkeypatch):
    monkeypatch.setattr(registry, "_registry", {})

    @register(ModuleKind.SAMPLER, ModelType.SD2)
    class First:
        pass

    with pytest.raises(RuntimeError, match="registered twice"):

        @register(ModuleKind.SAMPLER, ModelType.SD2)
        class Second:
            pass
