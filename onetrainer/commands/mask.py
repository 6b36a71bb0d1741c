"""`onetrainer mask DIR --prompt TEXT`: write a mask (`name-masklabel.png`, white = train) per image."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from onetrainer.commands.options import DEFAULT_DEVICE, BatchSize, Device, DtypeHalfOnGpu, Recursive, number_option
from onetrainer.dataset_tools.modes import MaskMode
from onetrainer.util.devices import WeightsDtype

EXAMPLES = (
    ("mask the people in every image with CLIPSeg", 'onetrainer mask dataset/ -p "a person"'),
    (
        "mask the pixels near a colour, no model needed",
        'onetrainer mask examples/shapes/ --model color -p "#ff0000" --mode replace',
    ),
    (
        "remove the text in the images from their existing masks",
        'onetrainer mask dataset/ -p "text" -p "watermark" --mode subtract',
    ),
)
SHOWN_EMPTY = 3
"""How many of the empty masks the warning names."""


def mask(
    directory: Annotated[Path, typer.Argument(metavar="DIR", help="Folder of images to mask.")],
    prompt: Annotated[
        list[str],
        typer.Option(
            "--prompt", "-p", metavar="TEXT", help="What to mask (repeatable): text for clipseg, a colour for color."
        ),
    ],
    model: Annotated[
        str,
        typer.Option(
            "--model", "-m", metavar="MODEL", help="clipseg, color (no model), or a CLIPSeg local path / hub id."
        ),
    ] = "clipseg",
    threshold: Annotated[
        float | None,
        number_option(
            "--threshold",
            min=0.0,
            max=1.0,
            help="clipseg: lowest probability (0.3); color: largest colour distance (0.2).",
        ),
    ] = None,
    smooth: Annotated[int, typer.Option(min=0, help="Blur the mask edge by this radius in pixels.")] = 5,
    expand: Annotated[int, typer.Option(min=0, help="Grow the mask by this many pixels.")] = 10,
    mode: Annotated[
        MaskMode,
        typer.Option(help="replace, fill (only images without a mask), add, subtract or blend with the old mask."),
    ] = MaskMode.FILL,
    alpha: Annotated[
        float, number_option("--alpha", min=0.0, max=1.0, help="Weight of the new mask in add/subtract/blend.")
    ] = 1.0,
    recursive: Recursive = False,
    batch_size: BatchSize = 4,
    device: Device = DEFAULT_DEVICE,
    dtype: DtypeHalfOnGpu = WeightsDtype.AUTO,
) -> None:
    """Mask what the prompts describe in every image in DIR; warns about masks where nothing matched."""
    from onetrainer.dataset_tools.mask import MaskRequest, mask_folder
    from onetrainer.ui.console import stderr, stdout
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
        dtype=dtype.value,
    )
    apply_threads()
    with file_progress("masking") as update:
        summary = mask_folder(request, lambda report: update(report.done, report.total))
    rows = summary.count_rows(written="masks written", kept="masks kept (fill)", empty="empty (nothing matched)")
    stdout.print(summary_table(rows, summary.failure_rows(directory)))
    if summary.empty:
        stderr.print(_empty_warning(summary.empty, len(summary.written), model), highlight=False)


def _empty_warning(empty: list[Path], written: int, model: str) -> str:
    """Rich markup: how many masks are black, a few of their names, and which way to move --threshold."""
    from rich.markup import escape

    names = ", ".join(escape(path.name) for path in empty[:SHOWN_EMPTY])
    more = f" and {len(empty) - SHOWN_EMPTY} more" if len(empty) > SHOWN_EMPTY else ""
    fix = (
        "raise --threshold (the largest colour distance)"
        if model == "color"
        else "lower --threshold (the smallest probability)"
    )
    return (
        f"[yellow]warning:[/] {len(empty)} of {written} masks are empty: nothing in those images matched "
        f"the prompt ({names}{more}). Black pixels do not train; check --prompt, or {fix}."
    )
