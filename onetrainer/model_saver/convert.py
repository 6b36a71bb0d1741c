"""Write an opened model, LoRA or embedding in another format: the saving half of `onetrainer convert`.

The input side (`model_loader.conversion_source`) exposes what it read through the attributes of
`Convertible`; this module picks the writer for the requested format. Full models stream tensor by
tensor from input to output, so a checkpoint is never held twice in memory.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from onetrainer.model_saver.adapter_files import write_embedding, write_lora
from onetrainer.model_saver.formats import check_output, resolve_format, save_dtype, write_errors
from onetrainer.model_saver.full_model import Progress, write_diffusers_folder, write_single_file
from onetrainer.model_saver.metadata import build_metadata
from onetrainer.util.config.output import SaveDtype, SaveFormat
from onetrainer.util.detect import EMBEDDING, LORA
from onetrainer.util.keymaps.lora_peft import DIFFUSERS_METADATA_KEY

if TYPE_CHECKING:
    import torch

    from onetrainer.model.diffusion import PipelineParts
    from onetrainer.util.family import FamilySpec


class Convertible(Protocol):
    kind: str
    spec: FamilySpec
    prediction_type: str | None
    metadata: dict[str, str]
    stream: Callable[[bool, tuple[str, ...]], Iterator[tuple[str, torch.Tensor]]] | None
    pipeline_parts: Callable[[], PipelineParts] | None
    lora_tensors: dict[str, torch.Tensor]
    lora_alphas: dict[str, float]
    lora_kind: str | None
    embedding: dict[str, torch.Tensor]
    placeholder: str | None
    architecture: Mapping[str, Mapping[str, Any]] | None
    zero_terminal_snr: bool

    @property
    def known_spec(self) -> FamilySpec | None:
        """`spec` when the family is known (the input or the user names it); None when it is undetermined."""
        ...


def write_conversion(
    source: Convertible,
    output: str | Path,
    *,
    to: SaveFormat | str = SaveFormat.AUTO,
    dtype: SaveDtype | str | None = None,
    overwrite: bool = False,
    progress: Progress | None = None,
    reads: Sequence[str | Path] = (),
) -> tuple[SaveFormat, Path]:
    """Check the request, then write; returns the format used and the output path.

    `dtype=None` keeps each tensor's dtype. The input's own header metadata is carried over, with our
    ModelSpec / `ss_*` keys written over it. `reads` are the local paths the conversion reads (input,
    `--config`): the output may not replace them.
    """
    output = Path(output).expanduser()
    fmt = resolve_format(to, source.kind, output)
    read = {f"{path}, which it converts from": Path(path) for path in reads if Path(path).expanduser().exists()}
    check_output(output, fmt, source.kind, overwrite=overwrite, read=read)
    cast = save_dtype(dtype)
    inherited = {k: v for k, v in source.metadata.items() if k != DIFFUSERS_METADATA_KEY}
    with write_errors(output):
        if source.kind == LORA:
            metadata = build_metadata(
                spec=source.known_spec,
                title=output.stem,
                prediction_type=source.prediction_type,
                adapter="lora",
                lora_kind=source.lora_kind,
                inherited=inherited,
            )
            write_lora(
                output,
                source.lora_tensors,
                source.lora_alphas,
                fmt=fmt,
                spec=source.spec,
                kind=source.lora_kind or "lora",
                metadata=metadata,
                dtype=cast,
                configs=source.architecture,
            )
        elif source.kind == EMBEDDING:
            metadata = build_metadata(
                spec=source.known_spec,
                title=output.stem,
                prediction_type=source.prediction_type,
                adapter="embedding",
                trigger_phrase=source.placeholder,
                inherited=inherited,
            )
            placeholder = source.placeholder or output.stem
            write_embedding(
                output, source.embedding, placeholder, fmt=fmt, spec=source.spec, metadata=metadata, dtype=cast
            )
        else:
            _write_model(source, output, fmt, cast, inherited, overwrite, progress)
    return fmt, output


def lora_warnings(source: Convertible, used: SaveFormat) -> list[str]:
    """What a written LoRA loses in other tools: a peft file, its parts they read only as kohya; a kohya file,
    its partly adapted attention layers A1111 skips."""
    from onetrainer.util.keymaps.lora import split_peft_key

    if source.kind != LORA:
        return []
    setting = f"--to {used.value}"
    if used is SaveFormat.PEFT:
        return source.spec.peft_warnings({key.partition(".")[0] for key in source.lora_tensors}, setting)
    if used is SaveFormat.KOHYA:
        return source.spec.all_or_none_warnings({split_peft_key(key)[0] for key in source.lora_tensors}, setting)
    return []


def _write_model(
    source: Convertible,
    output: Path,
    fmt: SaveFormat,
    cast: torch.dtype | None,
    inherited: dict[str, str],
    overwrite: bool,
    progress: Progress | None,
) -> None:
    assert source.stream is not None
    assert source.pipeline_parts is not None
    if fmt is SaveFormat.SINGLE_FILE:
        metadata = build_metadata(
            spec=source.known_spec, title=output.stem, prediction_type=source.prediction_type, inherited=inherited
        )
        write_single_file(
            output,
            source.stream,
            spec=source.spec,
            prediction_type=source.prediction_type,
            metadata=metadata,
            zero_terminal_snr=source.zero_terminal_snr,
            dtype=cast,
            progress=progress,
        )
        return
    parts = source.pipeline_parts()
    prediction = source.prediction_type or parts.configs["scheduler"].get("prediction_type")
    metadata = build_metadata(
        spec=source.known_spec, title=output.stem, prediction_type=prediction, inherited=inherited
    )
    write_diffusers_folder(
        output,
        source.stream,
        spec=source.spec,
        parts=parts,
        prediction_type=prediction,
        metadata=metadata,
        dtype=cast,
        overwrite=overwrite,
        progress=progress,
    )
