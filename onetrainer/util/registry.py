"""Where model families plug in: one class (or factory) per module type, registered under a model type.

A family registers its spec (`util.family.register_family`) and its loader, setup, sampler and saver
with `register` in its own files; nothing here lists the families. On the first lookup the family
packages are imported once (their modules import torch/diffusers lazily, so this stays cheap), which
runs the registrations.

`register` and `lookup` are typed per kind (overloads on the `ModuleKind` literal): mypy checks that
what a family registers is the factory its kind's contract asks for (`model.contracts`), and every
lookup returns that factory type, so the callers are checked against the same protocols. A kind held in
a variable matches no overload: spell the member out where you register or look up.
"""

from __future__ import annotations

import importlib
import importlib.util
import pkgutil
from collections.abc import Callable, Iterable
from enum import Enum
from typing import TYPE_CHECKING, Any, Literal, TypeVar, overload

from onetrainer.util.errors import UserError

if TYPE_CHECKING:
    from onetrainer.model.contracts import LoaderFactory, SamplerFactory, SaverFactory, SetupFactory

T = TypeVar("T")
L = TypeVar("L", bound="LoaderFactory")
St = TypeVar("St", bound="SetupFactory")
Sa = TypeVar("Sa", bound="SamplerFactory")
Sv = TypeVar("Sv", bound="SaverFactory")

FAMILY_PACKAGES = ("model", "model_loader", "model_setup", "model_sampler", "model_saver")
"""Sub-packages of `onetrainer` whose modules may register a family's spec or modules."""


class ModuleKind(str, Enum):
    LOADER = "model_loader"
    SETUP = "model_setup"
    SAMPLER = "model_sampler"
    SAVER = "model_saver"

    @property
    def noun(self) -> str:
        return self.value.removeprefix("model_").replace("_", " ")


_registry: dict[tuple[ModuleKind, str], Any] = {}
_discovered = False


@overload
def register(kind: Literal[ModuleKind.LOADER], *model_types: str) -> Callable[[L], L]: ...
@overload
def register(kind: Literal[ModuleKind.SETUP], *model_types: str) -> Callable[[St], St]: ...
@overload
def register(kind: Literal[ModuleKind.SAMPLER], *model_types: str) -> Callable[[Sa], Sa]: ...
@overload
def register(kind: Literal[ModuleKind.SAVER], *model_types: str) -> Callable[[Sv], Sv]: ...
def register(kind: ModuleKind, *model_types: str) -> Callable[[T], T]:
    """Decorator: make the class or factory `kind`'s module of each of `model_types`."""

    def decorate(item: T) -> T:
        for model_type in model_types:
            key = (kind, model_type)
            if key in _registry and _registry[key] is not item:
                raise RuntimeError(f"{kind.value} for {model_type} registered twice")
            _registry[key] = item
        return item

    return decorate


def discover() -> None:
    """Import every module of the family packages once, so their registrations have run."""
    global _discovered
    if _discovered:
        return
    _discovered = True
    for package_name in FAMILY_PACKAGES:
        name = f"onetrainer.{package_name}"
        if importlib.util.find_spec(name) is None:
            continue
        package = importlib.import_module(name)
        for info in pkgutil.walk_packages(package.__path__, prefix=f"{package.__name__}."):
            importlib.import_module(info.name)


def supported(kind: ModuleKind) -> list[str]:
    """The model types that registered a `kind` module, sorted."""
    discover()
    return sorted({model_type for (k, model_type) in _registry if k is kind})


def supporting(kinds: Iterable[ModuleKind]) -> list[str]:
    """The model types that registered every one of `kinds`."""
    usable: set[str] | None = None
    for kind in kinds:
        found = set(supported(kind))
        usable = found if usable is None else usable & found
    return sorted(usable or ())


@overload
def lookup(kind: Literal[ModuleKind.LOADER], model_type: str) -> LoaderFactory: ...
@overload
def lookup(kind: Literal[ModuleKind.SETUP], model_type: str) -> SetupFactory: ...
@overload
def lookup(kind: Literal[ModuleKind.SAMPLER], model_type: str) -> SamplerFactory: ...
@overload
def lookup(kind: Literal[ModuleKind.SAVER], model_type: str) -> SaverFactory: ...
def lookup(kind: ModuleKind, model_type: str) -> Any:
    """The registered class or factory, or a user error naming the model types this build supports."""
    discover()
    try:
        return _registry[(kind, model_type)]
    except KeyError:
        names = ", ".join(supported(kind)) or "none"
        raise UserError(
            f"model type '{model_type}' has no {kind.noun} in this version",
            hint=f"Supported model types: {names}.",
        ) from None
