"""`place` moves a component only when some tensor of it is elsewhere: a step that encodes its own batch asks
for its encoders every time."""

from __future__ import annotations

import pytest
import torch

from onetrainer.model_setup.placement import place


@pytest.fixture
def moves(monkeypatch: pytest.MonkeyPatch) -> list[torch.nn.Module]:
    """The modules `Module.to` was called on."""
    called: list[torch.nn.Module] = []
    original = torch.nn.Module.to

    def to(module: torch.nn.Module, *args: object, **kwargs: object) -> torch.nn.Module:
        called.append(module)
        return original(module, *args, **kwargs)

    monkeypatch.setattr(torch.nn.Module, "to", to)
    return called


def _encoder() -> torch.nn.Module:
    """Floating weights and an integer buffer (as position ids are), which no dtype argument converts."""
    module = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4))
    module.register_buffer("position_ids", torch.arange(4))
    return module


def test_a_component_already_in_place_is_not_walked_again(moves: list[torch.nn.Module]) -> None:
    module = _encoder()
    place(module, "cpu", torch.float32)
    place(module, torch.device("cpu"))
    assert moves == []


def test_a_component_with_any_tensor_elsewhere_is_moved(moves: list[torch.nn.Module]) -> None:
    module = _encoder()
    place(module, "cpu", torch.bfloat16)
    assert moves == [module]
    assert {param.dtype for param in module.parameters()} == {torch.bfloat16}
    assert module.position_ids.dtype == torch.int64
    place(module, "cpu", torch.bfloat16)
    assert moves == [module], "now in place"
    module[1].weight.data = module[1].weight.data.float()
    place(module, "cpu", torch.bfloat16)
    assert moves == [module, module]
    assert module[1].weight.dtype == torch.bfloat16
