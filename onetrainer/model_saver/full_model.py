"""Write a full model as an original single file (the family's layout) or as a diffusers pipeline folder.

Both writers take the weights as a replayable stream of diffusers-named tensors (`unet.<key>`,
`vae.<key>`, `text_encoder.<key>`, ...), whether they come from a model in memory or from a file being
converted, and cast and write them one at a time (see `util.safetensors_stream`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from onetrainer.util.atomic import atomic_directory, atomic_write_text
from onetrainer.util.errors import UserError
from onetrainer.util.family import FamilySpec, is_zero_terminal_snr
from onetrainer.util.safetensors_stream import write_safetensors_stream

if TYPE_CHECKING:
    import torch

    from onetrainer.model.diffusion import PipelineParts, WeightsStream

Progress = Callable[[str, int, int], None]
"""`progress(file, done, total)`, called after each tensor written."""

DIFFUSERS_WEIGHTS = "diffusion_pytorch_model.safetensors"
TRANSFORMERS_WEIGHTS = "model.safetensors"
SCHEDULER_FILE = "scheduler/scheduler_config.json"
ZERO_SNR_SCHEDULER = "DDIMScheduler"
"""The class a zero-terminal-SNR folder names where its own cannot rescale (SD 1.5's PNDM): diffusers would
sample it on the ordinary schedule. DDIM with trailing timesteps is what the zero-terminal-SNR paper samples with."""


def _cast(tensor: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
    return tensor.to(dtype) if dtype is not None and tensor.is_floating_point() else tensor


def write_single_file(
    output: Path,
    stream: WeightsStream,
    *,
    spec: FamilySpec,
    prediction_type: str | None,
    metadata: Mapping[str, str],
    zero_terminal_snr: bool = False,
    dtype: torch.dtype | None = None,
    progress: Progress | None = None,
) -> Path:
    """The original layout A1111/Forge/ComfyUI load, with the family's markers (ComfyUI's `v_pred`, `ztsnr`)."""
    if spec.single_file is None:
        raise UserError(
            f"{spec.title} models have no single-file layout in this version", hint="Save a diffusers folder."
        )
    single_file = spec.single_file
    components = tuple(dict.fromkeys(component for _, component in single_file.component_prefixes))
    keys = [key for key, _ in stream(True, components)]

    def converted(meta: bool) -> Iterator[tuple[str, torch.Tensor]]:
        converter = single_file.writer(keys)
        for key, tensor in stream(meta, components):
            yield from converter.feed(key, _cast(tensor, dtype))
        converter.finish()
        for key, tensor in single_file.markers(prediction_type, zero_terminal_snr=zero_terminal_snr).items():
            yield key, tensor.to("meta") if meta else tensor

    write_safetensors_stream(output, converted, metadata, _file_progress(progress, output.name))
    return output


def write_diffusers_folder(
    output: Path,
    stream: WeightsStream,
    *,
    spec: FamilySpec,
    parts: PipelineParts,
    prediction_type: str | None,
    metadata: Mapping[str, str],
    dtype: torch.dtype | None = None,
    overwrite: bool = False,
    progress: Progress | None = None,
) -> Path:
    """A diffusers pipeline folder, built in a temporary sibling and moved into place when complete."""
    import diffusers

    components = [c for c in spec.components if c.name in parts.configs]
    with atomic_directory(output, overwrite=overwrite) as folder:
        for component in components:
            library, class_name = parts.classes[component.name]
            name = TRANSFORMERS_WEIGHTS if library == "transformers" else DIFFUSERS_WEIGHTS
            header = {"format": "pt", **(metadata if component.name == spec.denoiser.name else {})}
            relative = f"{component.name}/{name}"
            write_safetensors_stream(
                folder / relative,
                _component(stream, component.name, dtype),
                header,
                _file_progress(progress, relative),
            )
            _write_json(
                folder / component.name / "config.json",
                _component_config(library, class_name, parts.configs[component.name], diffusers.__version__),
            )
            if component.tokenizer is not None:
                _save_tokenizer(
                    parts.tokenizers[component.tokenizer],
                    folder / component.tokenizer,
                    int(parts.configs[component.name]["vocab_size"]),
                    parts.embedding_tokens.get(component.tokenizer, frozenset()),
                )
        scheduler = {k: v for k, v in parts.configs["scheduler"].items() if k != "_use_default_values"}
        if prediction_type is not None:
            scheduler["prediction_type"] = prediction_type
        if is_zero_terminal_snr(scheduler) and not _takes(str(scheduler["_class_name"]), "rescale_betas_zero_snr"):
            scheduler["_class_name"] = ZERO_SNR_SCHEDULER
        scheduler["_diffusers_version"] = diffusers.__version__
        _write_json(folder / SCHEDULER_FILE, scheduler)
        _write_json(folder / "model_index.json", _model_index(spec, parts, str(scheduler["_class_name"]), components))
    return output


def _takes(class_name: str, setting: str) -> bool:
    """Whether diffusers' scheduler `class_name` has `setting` (an unknown class is taken to have it)."""
    import inspect

    import diffusers

    cls = getattr(diffusers, class_name, None)
    return cls is None or setting in inspect.signature(cls.__init__).parameters


def _save_tokenizer(tokenizer: Any, folder: Path, vocab_size: int, embedding_tokens: frozenset[int]) -> None:
    """Save the tokenizer without the embeddings' tokens, nor any other token past the text encoder's table.

    Embedding vectors are saved as their own files, not as table rows: in the folder their tokens would
    name rows that never trained (T5-XXL's table has 28 spare rows past its tokenizer, where the first
    added tokens land) or point past the end of the table, and adding the embedding to the saved model
    again would find its placeholder taken. The folder must stay usable on its own.
    """

    def kept(token_id: int) -> bool:
        return token_id < vocab_size and token_id not in embedding_tokens

    tokenizer.save_pretrained(folder)
    path = folder / "tokenizer.json"
    data = json.loads(path.read_text(encoding="utf-8"))
    added = [token for token in data.get("added_tokens", []) if kept(token["id"])]
    if len(added) != len(data.get("added_tokens", [])):
        atomic_write_text(path, json.dumps({**data, "added_tokens": added}, ensure_ascii=False))
    config_path = folder / "tokenizer_config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    decoder = config.get("added_tokens_decoder")
    if decoder:
        config["added_tokens_decoder"] = {k: v for k, v in decoder.items() if kept(int(k))}
        atomic_write_text(config_path, json.dumps(config, indent=2, ensure_ascii=False))


def _component(
    stream: WeightsStream, component: str, dtype: torch.dtype | None
) -> Callable[[bool], Iterator[tuple[str, torch.Tensor]]]:
    prefix = f"{component}."

    def only(meta: bool) -> Iterator[tuple[str, torch.Tensor]]:
        for key, tensor in stream(meta, (component,)):
            yield key.removeprefix(prefix), _cast(tensor, dtype)

    return only


def _component_config(library: str, class_name: str, config: Mapping[str, Any], version: str) -> dict[str, Any]:
    """A config.json as diffusers / transformers write it, without load-time bookkeeping keys."""
    if library == "transformers":
        clean = {k: v for k, v in config.items() if k not in ("_name_or_path", "dtype", "torch_dtype")}
        return {**clean, "architectures": [class_name]}
    clean = {k: v for k, v in config.items() if not k.startswith("_")}
    return {"_class_name": class_name, "_diffusers_version": version, **clean}


def _model_index(spec: FamilySpec, parts: PipelineParts, scheduler_class: str, components: list[Any]) -> dict[str, Any]:
    import diffusers

    index: dict[str, Any] = {
        "_class_name": spec.pipeline_classes[0],
        "_diffusers_version": diffusers.__version__,
        **parts.pipeline_config,
        "scheduler": ["diffusers", scheduler_class],
    }
    for component in components:
        index[component.name] = list(parts.classes[component.name])
        if component.tokenizer is not None:
            tokenizer = parts.tokenizers[component.tokenizer]
            index[component.tokenizer] = [type(tokenizer).__module__.split(".")[0], type(tokenizer).__name__]
    for component in spec.components:
        index.setdefault(component.name, [None, None])
        if component.tokenizer is not None:
            index.setdefault(component.tokenizer, [None, None])
    return index


def _write_json(path: Path, data: Mapping[str, Any]) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True, default=list) + "\n")


def _file_progress(progress: Progress | None, name: str) -> Callable[[int, int], None] | None:
    if progress is None:
        return None
    return lambda done, total: progress(name, done, total)
