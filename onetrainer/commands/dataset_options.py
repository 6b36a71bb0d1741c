"""Options shared by the commands that run a model over a folder of images (`caption`, `mask`).

One declaration each, so the two commands spell, default and document them the same way.
"""

from __future__ import annotations

from typing import Annotated

import typer

Recursive = Annotated[bool, typer.Option("--recursive", "-r", help="Include subfolders.")]
BatchSize = Annotated[int, typer.Option(min=1, help="Images per model call.")]
Device = Annotated[str | None, typer.Option(help="cpu, cuda or cuda:N (default: cuda if available).")]
Dtype = Annotated[
    str | None, typer.Option(help="float32, float16 or bfloat16 (default: float16 on GPU, float32 on CPU).")
]
