import pytest

from onetrainer.util import registry
from onetrainer.util.errors import UserError
from onetrainer.util.registry import ModuleKind, lookup, register


def test_lookup_of_unregistered_family_names_the_supported_ones(monkeypatch):
    monkeypatch.setattr(registry, "_registry", {})
    monkeypatch.setattr(registry, "_discovered", True)

    @register(ModuleKind.SAVER, "sd15")
    class Saver:
        pass

    assert lookup(ModuleKind.SAVER, "sd15") is Saver
    with pytest.raises(UserError) as info:
        lookup(ModuleKind.SAVER, "sdxl")
    assert "sdxl" in info.value.message
    assert "sd15" in info.value.hint


def test_registering_two_classes_for_one_slot_is_a_bug(monkeypatch):
    monkeypatch.setattr(registry, "_registry", {})

    @register(ModuleKind.SAMPLER, "sd2")
    class First:
        pass

    with pytest.raises(RuntimeError, match="registered twice"):

        @register(ModuleKind.SAMPLER, "sd2")
        class Second:
            pass
