"""Options that several commands share: one declaration each, so they are spelt, defaulted and
documented the same way everywhere.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Mapping
from typing import Annotated

import typer

from onetrainer.util.devices import WeightsDtype
from onetrainer.util.errors import UserError

Recursive = Annotated[bool, typer.Option("--recursive", "-r", help="Include subfolders.")]
BatchSize = Annotated[int, typer.Option("--batch-size", min=1, help="Images per model call.")]
Device = Annotated[
    str,
    typer.Option(
        "--device", metavar="DEVICE", help="auto (a CUDA GPU if there is one, else the CPU), cpu, cuda, cuda:N or mps."
    ),
]
DEFAULT_DEVICE = "auto"
ModelType = Annotated[
    str | None,
    typer.Option(
        "--model-type",
        metavar="TYPE",
        help="Model family, as model.type in a run config (default: detected from the model); a family this "
        "command cannot run is refused with the list of those it can.",
    ),
]

_DTYPE_HELP = "Weights dtype: fp32, fp16 or bf16; auto = {}."
DtypeHalfOnGpu = Annotated[
    WeightsDtype, typer.Option("--dtype", help=_DTYPE_HELP.format("fp16 on a GPU, fp32 on the CPU"))
]
DtypeKeep = Annotated[WeightsDtype, typer.Option("--dtype", help=_DTYPE_HELP.format("keep each tensor's dtype"))]


@contextlib.contextmanager
def keys_as_options(names: Mapping[str, str]) -> Iterator[None]:
    """Errors located at a config key (`model.base`) name the argument or option that set it instead.

    The loaders speak in config keys, the one name every caller shares; a command that took the value
    from its command line knows what the user typed.
    """
    try:
        yield
    except UserError as error:
        if error.where is not None and error.where in names:
            error.where = names[error.where]
        raise


def number_option(
    *names: str,
    min: float | None = None,
    max: float | None = None,
    help: str,
) -> typer.models.OptionInfo:
    """A float option with a range, whose `nan` is refused as not a number.

    typer checks `min`/`max` itself, and nan fails every comparison, so `--cfg nan` was refused as "should be
    greater than or equal to 0", which names the wrong thing. A parser takes the place of typer's check, so
    the range is checked there; `min`/`max` are still declared for the help line (`[x>=0.0]`).
    """
    return typer.Option(*names, min=min, max=max, metavar="NUMBER", parser=_number_parser(min, max), help=help)


def _number_parser(minimum: float | None, maximum: float | None) -> Callable[[object], float | None]:
    def parse(text: object) -> float | None:
        if text is None or isinstance(text, float):  # a default, not typed by the user
            return text
        try:
            value = float(str(text))
        except ValueError:
            raise typer.BadParameter(f"{text!r} is not a number") from None
        if math.isnan(value):
            raise typer.BadParameter(f"{text} is not a number")
        if math.isinf(value):
            raise typer.BadParameter(f"{text} is not a finite number")
        if minimum is not None and value < minimum:
            raise typer.BadParameter(f"{text} is below {minimum:g}, the smallest allowed")
        if maximum is not None and value > maximum:
            raise typer.BadParameter(f"{text} is above {maximum:g}, the largest allowed")
        return value

    return parse
