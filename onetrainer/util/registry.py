"""Where model families plug in: one class per module type, registered under a model type.

A family registers its loader, setup, sampler and saver with a decorator in its own files; nothing
here lists the families. On the first lookup the module-type packages are imported once (their
modules import torch/diffusers lazily, so this stays cheap), which runs the decorators.
"""

from __future__ import annotations

import importlib
import importlib.util
import pkgutil
from collections.abc import Callable
from enum import Enum
from typing import Any, TypeVar

from onetrainer.util.enums import ModelType
from onetrainer.util.errors import UserError

T = TypeVar("T")


class ModuleKind(str, Enum):
    LOADER = "model_loader"
    SETUP = "model_setup"
    SAMPLER = "model_sampler"
    SAVER = "model_saver"


_registry: dict[tuple[ModuleKind, ModelType], Any] = {}
_discovered = False


def register(kind: ModuleKind, *model_types: ModelType) -> Callable[[T], T]:
    """Class decorator: make `cls` the `kind` module of each of `model_types`."""

    def decorate(cls: T) -> T:
        for model_type in model_types:
            key = (kind, model_type)
            if key in _registry and _registry[key] is not cls:
                raise RuntimeError(f"{kind.value} for {model_type.value} registered twice")
            _registry[key] = cls
        return cls

    return decorate


def _discover() -> None:
    global _discovered
    if _discovered:
        return
    for kind in ModuleKind:
        name = f"onetrainer.{kind.value}"
        if importlib.util.find_spec(name) is None:
            continue
        package = importlib.import_module(name)
        for info in pkgutil.walk_packages(package.__path__, prefix=f"{package.__name__}."):
            importlib.import_module(info.name)
    _discovered = True


def supported(kind: ModuleKind) -> list[ModelType]:
    _discover()
    return sorted({model_type for (k, model_type) in _registry if k is kind}, key=lambda m: m.value)


def lookup(kind: ModuleKind, model_type: ModelType) -> Any:
    """The registered class, or a user error naming the model types this build supports."""
    _discover()
    try:
        return _registry[(kind, model_type)]
    except KeyError:
        names = ", ".join(m.value for m in supported(kind)) or "none"
        raise UserError(
            f"model type '{model_type.value}' has no {kind.value.replace('model_', '')} in this version",
            hint=f"Supported model types: {names}.",
        ) from None
