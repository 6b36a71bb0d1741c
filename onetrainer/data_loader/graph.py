"""A small graph of named per-sample steps, validated when it is built.

mgds found a step's input by walking backwards through a list for the nearest module with that output
name, silently fell through on `None`, and read settings through dotted names that turned into "off"
when misspelled; nothing checked any of it. Here each node declares its inputs, its outputs and the
concept settings it reads. Building a `Graph` checks that every input has exactly one producer, that
there are no cycles, and that every setting path exists in the concept schema; all problems are
reported together, with suggestions. A node can only read the settings it declared, and must return
exactly the outputs it declared, so the printed graph (`describe`) is the truth.

Each node gets its own random generator keyed by (run seed, concept seed, variation, copy, sample
id, node name): adding or removing a node never changes another node's random choices.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from onetrainer.data_loader.rng import keyed_generator, keyed_random
from onetrainer.util.errors import OneTrainerError
from onetrainer.util.suggest import did_you_mean

if TYPE_CHECKING:
    import torch

    from onetrainer.data_loader.scan import Sample
    from onetrainer.util.config.data import ConceptConfig


class GraphError(OneTrainerError):
    """The data-loader graph is inconsistent: a bug in the code that assembled it, not in the config."""

    title = "Invalid data-loader graph"


@dataclass(frozen=True)
class SampleContext:
    """What every node may know about the sample being materialised."""

    sample: Sample
    concept: ConceptConfig
    key: tuple[object, ...]
    """(run seed, concept seed, variation, copy, sample id): the prefix of every node's RNG key."""


NodeFn = Callable[["NodeView", dict[str, Any]], dict[str, Any]]


@dataclass(frozen=True)
class Node:
    name: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    fn: NodeFn
    settings: tuple[str, ...] = ()
    """Dotted concept-setting paths the node reads, e.g. `image.flip`."""


class NodeView:
    """A node's window on its sample: its declared settings and its own random streams."""

    def __init__(self, node: Node, context: SampleContext) -> None:
        self._node = node
        self._context = context

    @property
    def sample(self) -> Sample:
        return self._context.sample

    def setting(self, path: str) -> Any:
        if path not in self._node.settings:
            raise GraphError(f"node '{self._node.name}' reads setting '{path}' without declaring it")
        value: Any = self._context.concept
        for part in path.split("."):
            value = getattr(value, part)
        return value

    def rng(self) -> random.Random:
        return keyed_random(*self._context.key, self._node.name)

    def generator(self) -> torch.Generator:
        return keyed_generator(*self._context.key, self._node.name)


def _setting_problem(path: str, schema: type[BaseModel]) -> str | None:
    model: Any = schema
    walked: list[str] = []
    for part in path.split("."):
        fields = getattr(model, "model_fields", None)
        if fields is None:
            return f"'{'.'.join(walked)}' has no sub-settings"
        if part not in fields:
            prefix = ".".join(walked) + "." if walked else ""
            return f"unknown setting '{prefix}{part}'; {did_you_mean(part, fields, prefix=prefix)}".rstrip("; ")
        walked.append(part)
        model = fields[part].annotation
    return None


class Graph:
    def __init__(self, name: str, nodes: Sequence[Node], sources: Sequence[str], schema: type[BaseModel]) -> None:
        self.name = name
        self.nodes = tuple(nodes)
        self.sources = tuple(sources)
        self._producer: dict[str, str] = {}
        self._plans: dict[frozenset[str], tuple[Node, ...]] = {}
        problems = self._check(schema)
        if problems:
            raise GraphError(
                f"graph '{name}' is invalid:\n" + "\n".join(f"  - {problem}" for problem in problems),
                hint="Every input needs exactly one producer and every setting must exist in the concept schema.",
            )
        self.order = self._sorted()

    def _check(self, schema: type[BaseModel]) -> list[str]:
        problems: list[str] = []
        names = [node.name for node in self.nodes]
        problems += [f"two nodes are named '{name}'" for name in sorted({n for n in names if names.count(n) > 1})]
        for source in self.sources:
            self._producer[source] = "(source)"
        for node in self.nodes:
            for output in node.outputs:
                other = self._producer.get(output)
                if other is not None:
                    problems.append(f"'{output}' is produced by both '{other}' and '{node.name}'")
                else:
                    self._producer[output] = node.name
        for node in self.nodes:
            for item in node.inputs:
                if item not in self._producer:
                    hint = did_you_mean(item, self._producer)
                    problems.append(f"node '{node.name}' needs '{item}', which nothing produces; {hint}".rstrip("; "))
            for path in node.settings:
                problem = _setting_problem(path, schema)
                if problem:
                    problems.append(f"node '{node.name}': {problem}")
        return problems

    def _sorted(self) -> tuple[Node, ...]:
        """Nodes in dependency order (stable: list order among independent nodes)."""
        done = set(self.sources)
        remaining = list(self.nodes)
        order: list[Node] = []
        while remaining:
            ready = next((node for node in remaining if all(item in done for item in node.inputs)), None)
            if ready is None:
                cycle = ", ".join(node.name for node in remaining)
                raise GraphError(f"graph '{self.name}' has a cycle among: {cycle}")
            order.append(ready)
            done.update(ready.outputs)
            remaining.remove(ready)
        return tuple(order)

    @property
    def outputs(self) -> frozenset[str]:
        return frozenset(self._producer)

    def plan(self, wanted: Iterable[str]) -> tuple[Node, ...]:
        """The nodes needed for `wanted`, in order: unrequested branches (decoding, say) never run."""
        key = frozenset(wanted)
        cached = self._plans.get(key)
        if cached is not None:
            return cached
        unknown = sorted(key - self.outputs)
        if unknown:
            raise GraphError(f"graph '{self.name}' has no output {', '.join(unknown)}")
        needed = set(key)
        chosen: list[Node] = []
        for node in reversed(self.order):
            if needed.intersection(node.outputs):
                chosen.append(node)
                needed.update(node.inputs)
        plan = self._plans[key] = tuple(reversed(chosen))
        return plan

    def run(self, context: SampleContext, sources: dict[str, Any], wanted: Iterable[str]) -> dict[str, Any]:
        wanted = tuple(wanted)
        values = dict(sources)
        for node in self.plan(wanted):
            result = node.fn(NodeView(node, context), {item: values[item] for item in node.inputs})
            if set(result) != set(node.outputs):
                raise GraphError(f"node '{node.name}' returned {sorted(result)}, declared {list(node.outputs)}")
            values.update(result)
        return {item: values[item] for item in wanted}

    def describe(self) -> str:
        """The resolved graph, one node per line: inputs -> outputs [settings]."""
        lines = [f"{self.name}: sources {', '.join(self.sources)}"]
        width = max((len(node.name) for node in self.order), default=0)
        for node in self.order:
            settings = f"  [{', '.join(node.settings)}]" if node.settings else ""
            lines.append(f"  {node.name:<{width}}  {', '.join(node.inputs)} -> {', '.join(node.outputs)}{settings}")
        return "\n".join(lines)
