"""`onetrainer caption DIR`: write a caption file (`name.txt`) beside every image."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from onetrainer.commands.options import DEFAULT_DEVICE, BatchSize, Device, DtypeHalfOnGpu, Recursive, number_option
from onetrainer.dataset_tools.modes import CaptionMode
from onetrainer.util.devices import WeightsDtype

EXAMPLES = (
    ("caption the images that have no caption yet, with BLIP", "onetrainer caption dataset/"),
    (
        "tag anime-style images with a WD14 tagger, starting each caption with a trigger word",
        'onetrainer caption dataset/ --model wd14 --prefix "sks, " --exclude "simple background"',
    ),
    (
        "recaption a folder and its subfolders with Florence-2",
        "onetrainer caption dataset/ -r --model florence2 --mode replace",
    ),
)


def caption(
    directory: Annotated[Path, typer.Argument(metavar="DIR", help="Folder of images to caption.")],
    model: Annotated[
        str,
        typer.Option(
            "--model",
            "-m",
            metavar="MODEL",
            help="blip, blip2, florence2, wd14 (ONNX tagger), wd14:ORG/NAME, or a local path / hub id "
            "of a transformers image-to-text model.",
        ),
    ] = "blip",
    mode: Annotated[
        CaptionMode,
        typer.Option(help="replace: overwrite; fill: only images without a caption; add: append as a new line."),
    ] = CaptionMode.FILL,
    prefix: Annotated[str, typer.Option(help="Text put before each caption, as typed.")] = "",
    suffix: Annotated[str, typer.Option(help="Text put after each caption, as typed.")] = "",
    recursive: Recursive = False,
    batch_size: BatchSize = 4,
    device: Device = DEFAULT_DEVICE,
    dtype: DtypeHalfOnGpu = WeightsDtype.AUTO,
    prompt: Annotated[
        str | None,
        typer.Option(
            help="Text the model starts from, not written into the caption (BLIP/BLIP-2 continue it; "
            "Florence-2: a task token, default <DETAILED_CAPTION>)."
        ),
    ] = None,
    max_new_tokens: Annotated[int, typer.Option(min=1, help="Longest caption, in tokens.")] = 75,
    general_threshold: Annotated[
        float, number_option("--general-threshold", min=0.0, max=1.0, help="Tagger: lowest score of a general tag.")
    ] = 0.35,
    character_threshold: Annotated[
        float, number_option("--character-threshold", min=0.0, max=1.0, help="Tagger: lowest score of a character tag.")
    ] = 0.85,
    exclude: Annotated[
        list[str] | None,
        typer.Option(metavar="TAGS", help="Tagger: tags never written (repeatable, or comma-separated)."),
    ] = None,
) -> None:
    """Caption every image in DIR with a captioning model or a WD14-style tagger."""
    from onetrainer.dataset_tools.caption import CaptionRequest, caption_folder
    from onetrainer.dataset_tools.captioners.wd14 import TaggerSettings, normalise_tag
    from onetrainer.ui.console import stdout
    from onetrainer.ui.file_progress import file_progress, summary_table
    from onetrainer.util.threads import apply_threads

    excluded = frozenset(normalise_tag(tag) for entry in exclude or [] for tag in entry.split(",") if tag.strip())
    request = CaptionRequest(
        directory=directory,
        model=model,
        mode=mode,
        prefix=prefix,
        suffix=suffix,
        recursive=recursive,
        batch_size=batch_size,
        device=device,
        dtype=dtype.value,
        prompt=prompt,
        max_new_tokens=max_new_tokens,
        tagger=TaggerSettings(general_threshold, character_threshold, excluded),
    )
    apply_threads()
    with file_progress("captioning") as update:
        summary = caption_folder(request, lambda report: update(report.done, report.total))
    rows = summary.count_rows(written="captions written", kept="captions kept (fill)")
    stdout.print(summary_table(rows, summary.failure_rows(directory)))
