"""Write a full SD 1.x/2.x model as an original single file or as a diffusers pipeline folder.

Both writers take the weights as a replayable stream of diffusers-named tensors (`unet.<key>`,
`vae.<key>`, `text_encoder.<key>`), whether they come from a model in memory or from a file being
converted, and cast and write them one at a time (see `util.safetensors_stream`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from onetrainer.util.atomic import atomic_directory, atomic_write_text
from onetrainer.util.keymaps.engine import StreamConverter
from onetrainer.util.keymaps.single_file import COMPONENTS, V_PRED_MARKER, WRITE_IGNORE, table_for_diffusers_keys
from onetrainer.util.safetensors_stream import write_safetensors_stream

if TYPE_CHECKING:
    import torch
    from transformers import CLIPTokenizer

    from onetrainer.model.stable_diffusion import WeightsStream

Progress = Callable[[str, int, int], None]
"""`progress(file, done, total)`, called after each tensor written."""

WEIGHT_FILES = {
    "unet": "unet/diffusion_pytorch_model.safetensors",
    "vae": "vae/diffusion_pytorch_model.safetensors",
    "text_encoder": "text_encoder/model.safetensors",
}
CONFIG_FILES = {
    "unet": "unet/config.json",
    "vae": "vae/config.json",
    "text_encoder": "text_encoder/config.json",
    "scheduler": "scheduler/scheduler_config.json",
}
CLASS_NAMES = {"unet": "UNet2DConditionModel", "vae": "AutoencoderKL", "text_encoder": "CLIPTextModel"}


def _cast(tensor: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
    return tensor.to(dtype) if dtype is not None and tensor.is_floating_point() else tensor


def write_single_file(
    output: Path,
    stream: WeightsStream,
    *,
    family: str,
    prediction_type: str | None,
    metadata: Mapping[str, str],
    dtype: torch.dtype | None = None,
    progress: Progress | None = None,
) -> Path:
    """The original layout A1111/Forge/ComfyUI load; v-prediction adds ComfyUI's `v_pred` marker."""
    import torch

    keys = [key for key, _ in stream(True, COMPONENTS)]
    table = table_for_diffusers_keys(keys, family)

    def converted(meta: bool) -> Iterator[tuple[str, torch.Tensor]]:
        converter = StreamConverter(table, ignore=WRITE_IGNORE)
        for key, tensor in stream(meta, COMPONENTS):
            yield from converter.feed(key, _cast(tensor, dtype))
        converter.finish()
        if prediction_type == "v_prediction":
            yield V_PRED_MARKER, torch.empty(0, device="meta" if meta else "cpu")

    write_safetensors_stream(output, converted, metadata, _file_progress(progress, output.name))
    return output


def write_diffusers_folder(
    output: Path,
    stream: WeightsStream,
    *,
    configs: Mapping[str, Mapping[str, Any]],
    tokenizer: CLIPTokenizer,
    prediction_type: str,
    metadata: Mapping[str, str],
    dtype: torch.dtype | None = None,
    overwrite: bool = False,
    progress: Progress | None = None,
) -> Path:
    """A diffusers pipeline folder, built in a temporary sibling and moved into place when complete."""
    import diffusers

    with atomic_directory(output, overwrite=overwrite) as folder:
        for component in COMPONENTS:
            header = {"format": "pt", **(metadata if component == "unet" else {})}
            path = folder / WEIGHT_FILES[component]
            write_safetensors_stream(
                path, _component(stream, component, dtype), header, _file_progress(progress, WEIGHT_FILES[component])
            )
            _write_json(
                folder / CONFIG_FILES[component],
                _component_config(component, configs[component], diffusers.__version__),
            )
        scheduler = {k: v for k, v in configs["scheduler"].items() if k != "_use_default_values"}
        scheduler.update(prediction_type=prediction_type, _diffusers_version=diffusers.__version__)
        scheduler.setdefault("_class_name", "DDPMScheduler")
        _write_json(folder / CONFIG_FILES["scheduler"], scheduler)
        _save_tokenizer(tokenizer, folder / "tokenizer", int(configs["text_encoder"]["vocab_size"]))
        _write_json(folder / "model_index.json", _model_index(str(scheduler["_class_name"]), diffusers.__version__))
    return output


def _save_tokenizer(tokenizer: CLIPTokenizer, folder: Path, vocab_size: int) -> None:
    """Save the tokenizer without tokens past the text encoder's table (trained embeddings' placeholders).

    Embedding vectors are saved as their own files, not as table rows, so their tokens would point past
    the end of the saved text encoder's table; the folder must stay usable on its own.
    """
    tokenizer.save_pretrained(folder)
    path = folder / "tokenizer.json"
    data = json.loads(path.read_text(encoding="utf-8"))
    kept = [token for token in data.get("added_tokens", []) if token["id"] < vocab_size]
    if len(kept) != len(data.get("added_tokens", [])):
        atomic_write_text(path, json.dumps({**data, "added_tokens": kept}, ensure_ascii=False))
    config_path = folder / "tokenizer_config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    decoder = config.get("added_tokens_decoder")
    if decoder:
        config["added_tokens_decoder"] = {k: v for k, v in decoder.items() if int(k) < vocab_size}
        atomic_write_text(config_path, json.dumps(config, indent=2, ensure_ascii=False))


def _component(
    stream: WeightsStream, component: str, dtype: torch.dtype | None
) -> Callable[[bool], Iterator[tuple[str, torch.Tensor]]]:
    prefix = f"{component}."

    def only(meta: bool) -> Iterator[tuple[str, torch.Tensor]]:
        for key, tensor in stream(meta, (component,)):
            yield key.removeprefix(prefix), _cast(tensor, dtype)

    return only


def _component_config(component: str, config: Mapping[str, Any], version: str) -> dict[str, Any]:
    """A config.json as diffusers / transformers write it, without load-time bookkeeping keys."""
    if component == "text_encoder":
        clean = {k: v for k, v in config.items() if k not in ("_name_or_path", "dtype", "torch_dtype")}
        return {**clean, "architectures": [CLASS_NAMES[component]], "model_type": "clip_text_model"}
    clean = {k: v for k, v in config.items() if not k.startswith("_")}
    return {"_class_name": CLASS_NAMES[component], "_diffusers_version": version, **clean}


def _model_index(scheduler_class: str, version: str) -> dict[str, Any]:
    return {
        "_class_name": "StableDiffusionPipeline",
        "_diffusers_version": version,
        "feature_extractor": [None, None],
        "requires_safety_checker": False,
        "safety_checker": [None, None],
        "scheduler": ["diffusers", scheduler_class],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    }


def _write_json(path: Path, data: Mapping[str, Any]) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True, default=list) + "\n")


def _file_progress(progress: Progress | None, name: str) -> Callable[[int, int], None] | None:
    if progress is None:
        return None
    return lambda done, total: progress(name, done, total)
