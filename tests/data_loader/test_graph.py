"""The graph is checked when built, prints itself, runs only what is asked, and keys each node's RNG."""

from __future__ import annotations

from pathlib import Path

import pytest

from onetrainer.data_loader.graph import Graph, GraphError, Node, SampleContext
from onetrainer.data_loader.pipeline import image_graph, text_graph
from onetrainer.data_loader.scan import Sample
from onetrainer.util.config.data import ConceptConfig


def _ok(name: str, inputs: tuple[str, ...], outputs: tuple[str, ...], settings: tuple[str, ...] = ()) -> Node:
    return Node(name, inputs, outputs, lambda view, values: dict.fromkeys(outputs, 1), settings)


def _build(*nodes: Node) -> Graph:
    return Graph("test", nodes, ("source",), ConceptConfig)


def _context(tmp_path: Path, variation: int = 0) -> SampleContext:
    sample = Sample("c/a.png", 0, tmp_path / "a.png", 8, 8, None, None)
    return SampleContext(sample, ConceptConfig(path=tmp_path), (1, 0, "image", variation, 0, sample.id))


def test_missing_producer_is_reported_with_a_suggestion() -> None:
    with pytest.raises(GraphError, match="needs 'sorce', which nothing produces; did you mean 'source'"):
        _build(_ok("a", ("sorce",), ("x",)))


def test_two_producers_of_one_name_are_an_error() -> None:
    with pytest.raises(GraphError, match="'x' is produced by both 'a' and 'b'"):
        _build(_ok("a", ("source",), ("x",)), _ok("b", ("source",), ("x",)))


def test_unknown_setting_is_reported_with_a_suggestion() -> None:
    with pytest.raises(GraphError, match=r"unknown setting 'image\.flipp'; did you mean 'image\.flip'"):
        _build(_ok("a", ("source",), ("x",), ("image.flipp",)))


def test_all_problems_are_reported_together() -> None:
    with pytest.raises(GraphError) as info:
        _build(_ok("a", ("nothing",), ("x",), ("caption.bogus",)), _ok("a", ("source",), ("y",)))
    assert info.value.message.count("\n  - ") == 3


def test_cycles_are_found() -> None:
    with pytest.raises(GraphError, match="cycle"):
        _build(_ok("a", ("y",), ("x",)), _ok("b", ("x",), ("y",)))


def test_undeclared_setting_read_is_refused(tmp_path: Path) -> None:
    node = Node("sneaky", ("source",), ("x",), lambda view, values: {"x": view.setting("image.flip")})
    with pytest.raises(GraphError, match="without declaring it"):
        _build(node).run(_context(tmp_path), {"source": 0}, ["x"])


def test_node_must_return_its_declared_outputs(tmp_path: Path) -> None:
    node = Node("liar", ("source",), ("x",), lambda view, values: {"y": 1})
    with pytest.raises(GraphError, match="declared"):
        _build(node).run(_context(tmp_path), {"source": 0}, ["x"])


def test_only_needed_nodes_run(tmp_path: Path) -> None:
    ran: list[str] = []

    def track(name: str, outputs: tuple[str, ...]):
        return lambda view, values: ran.append(name) or dict.fromkeys(outputs, 0)

    graph = _build(
        Node("cheap", ("source",), ("small",), track("cheap", ("small",))),
        Node("expensive", ("source",), ("big",), track("expensive", ("big",))),
    )
    assert graph.run(_context(tmp_path), {"source": 0}, ["small"]) == {"small": 0}
    assert ran == ["cheap"]


def test_node_streams_are_independent_of_other_nodes(tmp_path: Path) -> None:
    draw = Node("draw", ("source",), ("x",), lambda view, values: {"x": view.rng().random()})
    extra = Node("extra", ("source",), ("y",), lambda view, values: {"y": view.rng().random()})
    alone = _build(draw).run(_context(tmp_path), {"source": 0}, ["x"])
    with_extra = _build(extra, draw).run(_context(tmp_path), {"source": 0}, ["y", "x"])
    assert alone["x"] == with_extra["x"] != with_extra["y"]
    assert _build(draw).run(_context(tmp_path, variation=1), {"source": 0}, ["x"]) != alone


def test_standard_graphs_validate_and_describe_themselves() -> None:
    images, texts = image_graph(), text_graph()
    described = images.describe()
    assert "flip          -> flipped  [image.flip]" in described
    assert "mirror       image.cropped, mask.cropped, flipped -> image.flipped, mask.flipped" in described
    assert {"pixels", "mask", "crop_top_left", "original_size"} <= images.outputs
    assert "caption" in texts.outputs
    assert [node.name for node in images.plan(["crop_top_left"])] == ["flip", "geometry"]
