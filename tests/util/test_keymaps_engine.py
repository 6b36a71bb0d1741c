from __future__ import annotations

import pytest
import torch

from onetrainer.util.keymaps.engine import (
    CONV1X1,
    TRANSPOSE,
    Ignore,
    KeyMapError,
    KeyTable,
    Row,
    StreamConverter,
)

TABLE = KeyTable(
    [
        Row("up.0.", "out.3.1."),
        Row("up.0.sampler.", "out.3.1.conv."),
        Row("pos.weight", "positional"),
        Row("attn.q.", "attn.q_conv.", CONV1X1),
        Row("proj.weight", "projection", TRANSPOSE),
        Row(("qkv.q.weight", "qkv.k.weight", "qkv.v.weight"), "in_proj_weight"),
    ]
)


def convert(state_dict: dict[str, torch.Tensor], *, reverse: bool = False) -> dict[str, torch.Tensor]:
    return StreamConverter(TABLE, reverse=reverse).convert(state_dict)


def test_prefix_rows_carry_the_rest_of_the_key() -> None:
    assert TABLE.map_key("up.0.norm.weight") == "out.3.1.norm.weight"
    assert TABLE.map_key("out.3.1.norm.weight", reverse=True) == "up.0.norm.weight"


def test_longest_prefix_wins_in_both_directions() -> None:
    assert TABLE.map_key("up.0.sampler.weight") == "out.3.1.conv.weight"
    assert TABLE.map_key("out.3.1.conv.weight", reverse=True) == "up.0.sampler.weight"


def test_exact_rows_match_only_the_whole_key() -> None:
    assert TABLE.map_key("pos.weight") == "positional"
    assert TABLE.map_key("positional", reverse=True) == "pos.weight"
    assert TABLE.map_key("pos.weight.extra") is None


def test_conv1x1_reshapes_forward_and_back() -> None:
    weight = torch.randn(3, 5)
    (key, conv), *_ = convert({"attn.q.weight": weight}).items()
    assert key == "attn.q_conv.weight"
    assert conv.shape == (3, 5, 1, 1)
    back = convert({key: conv}, reverse=True)
    assert torch.equal(back["attn.q.weight"], weight)


def test_conv1x1_leaves_biases_alone() -> None:
    bias = torch.randn(3)
    assert convert({"attn.q.bias": bias})["attn.q_conv.bias"].shape == (3,)


def test_transpose_row() -> None:
    weight = torch.randn(2, 4)
    assert torch.equal(convert({"proj.weight": weight})["projection"], weight.T)


def test_fused_rows_join_in_order_and_split_back() -> None:
    parts = {f"qkv.{p}.weight": torch.full((2, 3), float(i)) for i, p in enumerate("qkv")}
    fused = convert(dict(reversed(parts.items())))["in_proj_weight"]
    assert fused.shape == (6, 3)
    assert fused[:, 0].tolist() == [0, 0, 1, 1, 2, 2]
    back = convert({"in_proj_weight": fused}, reverse=True)
    assert back.keys() == parts.keys()
    assert all(torch.equal(back[k], parts[k]) for k in parts)


def test_stream_holds_only_unfinished_fused_parts() -> None:
    stream = StreamConverter(TABLE)
    assert list(stream.feed("qkv.q.weight", torch.zeros(1, 1))) == []
    assert [k for k, _ in stream.feed("pos.weight", torch.zeros(1))] == ["positional"]
    assert list(stream.feed("qkv.k.weight", torch.zeros(1, 1))) == []
    assert [k for k, _ in stream.feed("qkv.v.weight", torch.zeros(1, 1))] == ["in_proj_weight"]
    stream.finish()


def test_incomplete_fuse_is_reported() -> None:
    with pytest.raises(KeyMapError, match=r"in_proj_weight: only parts \[0, 2\]"):
        convert({"qkv.q.weight": torch.zeros(1), "qkv.v.weight": torch.zeros(1)})


def test_every_unknown_key_is_listed_together() -> None:
    with pytest.raises(KeyMapError, match="2 key") as error:
        convert({"nope.a": torch.zeros(1), "nope.b": torch.zeros(1), "pos.weight": torch.zeros(1)})
    assert "nope.a" in error.value.message
    assert "nope.b" in error.value.message


def test_ignored_keys_are_dropped_before_lookup() -> None:
    ignore = Ignore(exact=frozenset({"step"}), prefixes=("ema.",), suffixes=(".position_ids",))
    stream = StreamConverter(TABLE, ignore=ignore)
    sd = {"step": 1, "ema.x": 2, "up.0.position_ids": 3, "pos.weight": torch.zeros(1)}
    out = [key for k, v in sd.items() for key, _ in stream.feed(k, v)]
    stream.finish()
    assert out == ["positional"]
    assert stream.ignored == ["step", "ema.x", "up.0.position_ids"]
