"""`onetrainer mask DIR --prompt TEXT`: write a mask (`name-masklabel.png`, white = train) per image."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from onetrainer.commands.dataset_options import BatchSize, Device, Dtype, Recursive
from onetrainer.dataset_tools.modes import MaskMode


def mask(
    directory: Annotated[Path, typer.Argument(help="Folder of images to mask.")],
    prompt: Annotated[
        list[str],
        typer.Option("--prompt", "-p", help="What to mask (repeatable): text for clipseg, a colour for color."),
    ],
    model: Annotated[
        str, typer.Option("--model", "-m", help="clipseg, color (no model), or a CLIPSeg local path / hub id.")
    ] = "clipseg",
    threshold: Annotated[
        float | None,
        typer.Option(min=0.0, max=1.0, help="clipseg: lowest probability (0.3); color: largest colour distance (0.1)."),
    ] = None,
    smooth: Annotated[int, typer.Option(min=0, help="Blur the mask edge by this radius in pixels.")] = 5,
    expand: Annotated[int, typer.Option(min=0, help="Grow the mask by this many pixels.")] = 10,
    mode: Annotated[
        MaskMode,
        typer.Option(help="replace, fill (only images without a mask), add, subtract or blend with the old mask."),
    ] = MaskMode.FILL,
    alpha: Annotated[float, typer.Option(min=0.0, max=1.0, help="Weight of the new mask in add/subtract/blend.")] = 1.0,
    recursive: Recursive = False,
    batch_size: BatchSize = 4,
    device: Device = None,
    dtype: Dtype = None,
) -> None:
    """Mask what the prompts describe in every image in DIR."""
    from onetrainer.dataset_tools.mask import MaskRequest, mask_folder
    from onetrainer.ui.console import stdout
    from onetrainer.ui.file_progress import file_progress, summary_table
    from onetrainer.util.threads import apply_threads

    request = MaskRequest(
        directory=directory,
        prompts=prompt,
        model=model,
        threshold=threshold,
        smooth=smooth,
        expand=expand,
        mode=mode,
        alpha=alpha,
        recursive=recursive,
        batch_size=batch_size,
        device=device,
        dtype=dtype,
    )
    apply_threads()
    with file_progress("masking") as update:
        summary = mask_folder(request, lambda report: update(report.done, report.total))
    rows = summary.count_rows(written="masks written", kept="masks kept (fill)")
    stdout.print(summary_table(rows, summary.failure_rows(directory)))
