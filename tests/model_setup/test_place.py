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


def test_in_fp16_a_t5_keeps_its_fp32_layers_and_counts_as_placed(moves: list[torch.nn.Module]) -> None:
    """transformers keeps T5's `wo` in fp32 under fp16 (its activations overflow fp16); casting the whole
    component, as the placement does, would undo that."""
    from transformers import T5Config, T5EncoderModel

    config = T5Config(vocab_size=32, d_model=16, d_kv=4, d_ff=32, num_layers=2, num_heads=4)
    t5 = T5EncoderModel(config)
    place(t5, "cpu", torch.float16)
    kept = {name for name, param in t5.named_parameters() if param.dtype == torch.float32}
    assert kept == {f"encoder.block.{n}.layer.1.DenseReluDense.wo.weight" for n in range(2)}
    assert {param.dtype for name, param in t5.named_parameters() if name not in kept} == {torch.float16}
    moved = list(moves)
    place(t5, "cpu", torch.float16)
    assert moves == moved, "in place the second time"
    ids = torch.tensor([[1, 2, 3]])
    assert torch.isfinite(t5(ids).last_hidden_state).all()
