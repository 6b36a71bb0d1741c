"""Options that several commands share: one declaration each, so they are spelt, defaulted and
documented the same way everywhere.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
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
