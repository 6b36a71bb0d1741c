"""The saver every family shares: what a training run writes at the end (and at each save).

Where file layouts differ per family (kohya LoRA names, single-file keys, A1111 embedding keys), the
writers ask the family spec, so a family registers this saver as it is.

A LoRA run writes the LoRA; an embedding run its embedding; a full run the whole model. Embeddings
trained beside a LoRA or a full model are written as A1111 files into an `embeddings/` folder next to
the output, each named after its placeholder, since A1111 and ComfyUI take the trigger word from the
file name.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

from onetrainer.model_saver.adapter_files import lora_from_model, write_embedding, write_lora
from onetrainer.model_saver.formats import METHOD_KINDS, check_output, resolve_format, save_dtype, write_errors
from onetrainer.model_saver.full_model import write_diffusers_folder, write_single_file
from onetrainer.model_saver.metadata import build_metadata
from onetrainer.util.config.output import SaveDtype, SaveFormat
from onetrainer.util.detect import EMBEDDING, LORA
from onetrainer.util.enums import TrainingMethod
from onetrainer.util.errors import UserError
from onetrainer.util.family import is_zero_terminal_snr

if TYPE_CHECKING:
    import torch

    from onetrainer.model.adapters.embedding import EmbeddingAdapter
    from onetrainer.model.diffusion import DiffusionModel
    from onetrainer.util.config.schema import TrainConfig


class DiffusionSaver:
    def save(
        self,
        model: DiffusionModel,
        output: str | Path,
        *,
        method: TrainingMethod,
        format: SaveFormat | str = SaveFormat.AUTO,
        dtype: SaveDtype | str | None = SaveDtype.FP16,
        config: TrainConfig | None = None,
        overwrite: bool = False,
    ) -> list[Path]:
        """Write what `method` trained to `output`; returns every path written."""
        output = Path(output).expanduser()
        kind = METHOD_KINDS[method]
        fmt = resolve_format(_family_default(format, kind, model), kind, output)
        check_output(output, fmt, kind, overwrite=overwrite)
        cast = save_dtype(dtype)
        with write_errors(output):
            embeddings = list(model.adapters.embeddings)
            if kind == EMBEDDING:
                if not embeddings:
                    raise UserError("the model has no embedding to save")
                first, *embeddings = embeddings
                written = [self._embedding(model, first, output, fmt, cast, config)]
            elif kind == LORA:
                written = [self._lora(model, output, fmt, cast, config)]
            else:
                written = [self._full(model, output, fmt, cast, config, overwrite)]
            for embedding in embeddings:
                beside = output.parent / "embeddings" / f"{file_stem(embedding.placeholder)}.safetensors"
                check_output(beside, SaveFormat.A1111, EMBEDDING, overwrite=overwrite)
                written.append(self._embedding(model, embedding, beside, SaveFormat.A1111, cast, config))
        return written

    def _lora(
        self,
        model: DiffusionModel,
        output: Path,
        fmt: SaveFormat,
        cast: torch.dtype | None,
        config: TrainConfig | None,
    ) -> Path:
        tensors, alphas, kind = lora_from_model(model)
        adapter = model.adapters.lora
        assert adapter is not None
        metadata = build_metadata(
            spec=model.spec,
            title=output.stem,
            prediction_type=model.prediction_type,
            adapter="lora",
            lora_kind=kind,
            rank=adapter.rank,
            alpha=adapter.alpha,
            dora_axis=adapter.dora_axis,
            config=config,
        )
        return write_lora(
            output,
            tensors,
            alphas,
            fmt=fmt,
            spec=model.spec,
            kind=kind,
            metadata=metadata,
            dtype=cast,
            configs=model.component_configs(),
        )

    def _embedding(
        self,
        model: DiffusionModel,
        embedding: EmbeddingAdapter,
        output: Path,
        fmt: SaveFormat,
        cast: torch.dtype | None,
        config: TrainConfig | None,
    ) -> Path:
        metadata = build_metadata(
            spec=model.spec,
            title=output.stem,
            prediction_type=model.prediction_type,
            adapter="embedding",
            trigger_phrase=embedding.placeholder,
            config=config,
        )
        return write_embedding(
            output,
            embedding.vectors(),
            embedding.placeholder,
            fmt=fmt,
            spec=model.spec,
            metadata=metadata,
            dtype=cast,
        )

    def _full(
        self,
        model: DiffusionModel,
        output: Path,
        fmt: SaveFormat,
        cast: torch.dtype | None,
        config: TrainConfig | None,
        overwrite: bool,
    ) -> Path:
        metadata = build_metadata(
            spec=model.spec, title=output.stem, prediction_type=model.prediction_type, config=config
        )
        stream = model.weights_stream()
        if fmt is SaveFormat.SINGLE_FILE:
            return write_single_file(
                output,
                stream,
                spec=model.spec,
                prediction_type=model.prediction_type,
                metadata=metadata,
                zero_terminal_snr=is_zero_terminal_snr(model.noise_scheduler.config),
                dtype=cast,
            )
        return write_diffusers_folder(
            output,
            stream,
            spec=model.spec,
            parts=model.pipeline_parts(),
            prediction_type=model.prediction_type,
            metadata=metadata,
            dtype=cast,
            overwrite=overwrite,
        )


def file_stem(placeholder: str) -> str:
    """A file name for a placeholder: `<my-cat>` -> `my-cat` (the trigger word A1111 derives from it)."""
    return re.sub(r"[^\w.-]+", "_", placeholder.strip("<> ")).strip("._") or "embedding"


def _family_default(requested: SaveFormat | str, kind: str, model: DiffusionModel) -> SaveFormat | str:
    """`auto` for a LoRA is the family's layout for the parts it adapts (kohya, or peft for a family without
    kohya names or whose kohya names diffusers cannot read, unless a part loads elsewhere only as kohya)."""
    if kind == LORA and str(getattr(requested, "value", requested)) == SaveFormat.AUTO.value:
        adapted = model.adapters.lora.components if model.adapters.lora is not None else ()
        return SaveFormat(model.spec.auto_lora_format_for(adapted))
    return requested
