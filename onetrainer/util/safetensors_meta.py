"""Safetensors header metadata: ModelSpec and kohya `ss_*` keys, and a header-only reader.

UIs show and sort models by these keys: A1111/Forge and ComfyUI read `modelspec.*` (Stability AI's
ModelSpec 1.0), LoRA browsers and the additional-networks extension read the `ss_*` keys sd-scripts
writes (A1111 tells a LoRA's family by `ss_base_model_version`, written from the family spec). Header values must
be strings, so numbers are written with `str` and structures as JSON, as sd-scripts does.

`read_safetensors_header` reads only the JSON header, so inspecting a multi-GB checkpoint is instant
and loads no tensor.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import struct
from typing import TYPE_CHECKING, Any

from onetrainer.util.errors import UserError

if TYPE_CHECKING:
    from onetrainer.util.family import FamilySpec

SAI_MODEL_SPEC_VERSION = "1.0.0"
IMPL_STABILITY_AI = "https://github.com/Stability-AI/generative-models"
IMPL_DIFFUSERS = "diffusers"

ADAPTERS = {"lora": "lora", "embedding": "textual-inversion"}
DTYPE_NAMES = {
    "F64": "float64",
    "F32": "float32",
    "F16": "float16",
    "BF16": "bfloat16",
    "F8_E4M3": "float8_e4m3fn",
    "F8_E5M2": "float8_e5m2",
    "I64": "int64",
    "I32": "int32",
    "I16": "int16",
    "I8": "int8",
    "U8": "uint8",
    "BOOL": "bool",
}
"""Safetensors header dtype codes -> the torch names users know."""

# The `ss_*` keys tools read most (names without the prefix); `ss_metadata` refuses others, so a
# typo fails loudly instead of writing a key nothing reads.
SS_KEYS = frozenset(
    {
        "network_module", "network_dim", "network_alpha", "network_args", "output_name",
        "training_started_at", "training_finished_at", "steps", "epoch", "num_epochs", "max_train_steps",
        "resolution", "num_train_images", "num_reg_images", "batch_size_per_device", "total_batch_size",
        "gradient_accumulation_steps", "tag_frequency", "dataset_dirs", "datasets", "bucket_info",
        "enable_bucket", "learning_rate", "unet_lr", "text_encoder_lr", "optimizer", "lr_scheduler",
        "lr_warmup_steps", "mixed_precision", "full_fp16", "seed", "noise_offset", "min_snr_gamma",
        "clip_skip", "max_token_length", "caption_dropout_rate", "shuffle_caption", "keep_tokens",
        "sd_model_name", "sd_model_hash", "new_sd_model_hash", "vae_name", "session_id",
        "training_comment", "network_dropout", "gradient_checkpointing",
    }
)  # fmt: skip


class HeaderError(UserError):
    """A file is not a readable safetensors file."""

    title = "Not a safetensors file"


def modelspec_architecture(spec: FamilySpec, *, prediction_type: str | None = None, adapter: str | None = None) -> str:
    """`stable-diffusion-v2-768-v`, or with an adapter `stable-diffusion-v1/lora`, `.../textual-inversion`."""
    arch = spec.modelspec_for(prediction_type)
    return f"{arch}/{ADAPTERS[adapter]}" if adapter else arch


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, (dict, list)):
        return json.dumps(value, ensure_ascii=False)
    return str(value)


def modelspec_metadata(
    *,
    spec: FamilySpec,
    title: str,
    prediction_type: str | None = None,
    adapter: str | None = None,
    resolution: int | tuple[int, int] | None = None,
    date: _dt.datetime | None = None,
    trigger_phrase: str | None = None,
    implementation: str | None = None,
    **optional: str | None,
) -> dict[str, str]:
    """The `modelspec.*` keys: the four required ones plus resolution, date and prediction type.

    `adapter` is None for a full model, "lora" or "embedding". Implementation follows sd-scripts: a
    LoRA over diffusers module names says "diffusers" (the family's kohya naming tells); checkpoints,
    embeddings and LoRAs over the original module names follow Stability AI's code, unless the family's
    naming or single-file layout names another original implementation (`implementation`). `optional` takes
    further ModelSpec fields (description, author, license, tags, usage_hint, merged_from, ...); None
    values are left out.
    """
    if adapter is not None and adapter not in ADAPTERS:
        raise UserError(f"unknown adapter kind {adapter!r}", hint=f"expected one of {tuple(ADAPTERS)}")
    if implementation is None:
        naming = getattr(spec.lora_naming, "implementation", IMPL_STABILITY_AI)
        checkpoint = getattr(spec.single_file, "implementation", IMPL_STABILITY_AI)
        implementation = naming if adapter == "lora" else checkpoint if adapter is None else IMPL_STABILITY_AI
    size = resolution or spec.resolution_for(prediction_type)
    width, height = (size, size) if isinstance(size, int) else size
    stamp = (date or _dt.datetime.now().astimezone()).isoformat(timespec="seconds")
    prediction = {"v_prediction": "v", "epsilon": "epsilon", "sample": "sample"}.get(prediction_type or "")
    fields: dict[str, Any] = {
        "sai_model_spec": SAI_MODEL_SPEC_VERSION,
        "architecture": modelspec_architecture(spec, prediction_type=prediction_type, adapter=adapter),
        "implementation": implementation,
        "title": title,
        "resolution": f"{width}x{height}",
        "date": stamp,
        "prediction_type": prediction,
        "trigger_phrase": trigger_phrase,
        **optional,
    }
    return {f"modelspec.{key}": _text(value) for key, value in fields.items() if value is not None}


def ss_metadata(*, spec: FamilySpec, prediction_type: str | None = None, **fields: Any) -> dict[str, str]:
    """Common kohya `ss_*` keys; pass names without the prefix (`network_dim=16`, `resolution=(512, 512)`).

    The base model version and `ss_v2` come from the family spec (sd-scripts appends "_v" for
    v-prediction where the family's version string takes it). Dicts and lists become JSON, other values
    `str()`, as sd-scripts writes them (a resolution tuple reads "(512, 512)"); None values are left out.
    """
    unknown = sorted(set(fields) - SS_KEYS)
    if unknown:
        raise UserError(f"unknown ss_* metadata key(s): {', '.join(unknown)}")
    v_suffix = "_v" if prediction_type == "v_prediction" and spec.kohya_v_suffix else ""
    out = {"ss_base_model_version": spec.kohya_base_model_version + v_suffix, "ss_v2": str(spec.kohya_v2)}
    out.update({f"ss_{key}": _text(value) for key, value in fields.items() if value is not None})
    return out


MAX_HEADER_BYTES = 100_000_000
"""The limit the safetensors library itself enforces."""
DTYPE_BITS = {
    "BOOL": 8, "U8": 8, "I8": 8, "F8_E5M2": 8, "F8_E4M3": 8, "F8_E8M0": 8, "F8_E4M3FNUZ": 8, "F8_E5M2FNUZ": 8,
    "F4": 4, "F6_E2M3": 6, "F6_E3M2": 6, "I16": 16, "U16": 16, "F16": 16, "BF16": 16,
    "I32": 32, "U32": 32, "F32": 32, "C64": 64, "F64": 64, "I64": 64, "U64": 64,
}  # fmt: skip
"""Bits per element of every dtype code the safetensors library (0.8) accepts."""
TRUNCATED_HINT = "The file may be truncated (an interrupted download or copy): download or export it again."


def read_safetensors_header(
    path: str | os.PathLike[str],
) -> tuple[dict[str, str], dict[str, tuple[str, tuple[int, ...]]]]:
    """Return (`__metadata__`, `{key: (dtype, shape)}`) from the header alone; no tensor is read.

    The header is held to the rules the safetensors library checks when it opens a file (known
    dtypes, offsets that cover the data section exactly, sizes that match the shapes), against the
    file's real size, so a truncated or lying file is refused here as it would be by every loader,
    instead of being described as valid.
    """
    try:
        with open(path, "rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            prefix = handle.read(8)
            if len(prefix) < 8:
                raise HeaderError(f"{path}: file is too short ({size} bytes)")
            (length,) = struct.unpack("<Q", prefix)
            if length > MAX_HEADER_BYTES:
                raise HeaderError(f"{path}: header length {length} is over the safetensors limit")
            if length > size - 8:
                raise HeaderError(
                    f"{path}: the file is truncated: header length {length} does not fit a {size}-byte file",
                    hint=TRUNCATED_HINT,
                )
            header = json.loads(handle.read(length))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise HeaderError(f"{path}: header is not valid JSON ({error})") from error
    if not isinstance(header, dict):
        raise HeaderError(f"{path}: header is not a JSON object")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise HeaderError(f"{path}: __metadata__ is not a map of strings")
    try:
        layout = {key: _entry(info) for key, info in header.items()}
    except (KeyError, TypeError, ValueError) as error:
        raise HeaderError(f"{path}: malformed tensor entry ({error})") from error
    _check_offsets(path, layout, data_bytes=size - 8 - length)
    return dict(metadata), {key: (dtype, shape) for key, (dtype, shape, _) in layout.items()}


def _entry(info: Any) -> tuple[str, tuple[int, ...], tuple[int, int]]:
    """(dtype, shape, (start, end)) of one tensor entry; ValueError where the library would refuse it."""
    dtype, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
    if dtype not in DTYPE_BITS:
        raise ValueError(f"unknown dtype {dtype!r}")
    if not all(isinstance(n, int) and n >= 0 for n in [*shape, *offsets]) or len(offsets) != 2:
        raise ValueError(f"shape {shape} / data_offsets {offsets} are not non-negative integers")
    start, end = offsets
    bits = DTYPE_BITS[dtype] * math.prod(shape)
    if end < start or bits % 8 or bits // 8 != end - start:
        raise ValueError(f"{dtype} {shape} does not fill data_offsets {offsets}")
    return dtype, tuple(shape), (start, end)


def _check_offsets(path: str | os.PathLike[str], layout: dict[str, Any], *, data_bytes: int) -> None:
    """The tensors must tile the data section from its first byte to the file's last, without gaps."""
    position = 0
    for key, (_, _, (start, end)) in sorted(layout.items(), key=lambda item: item[1][2]):
        if start != position:
            raise HeaderError(f"{path}: tensor {key} starts at byte {start} of the data, expected {position}")
        position = end
    if position > data_bytes:
        raise HeaderError(
            f"{path}: the file is truncated: its header describes {position:,} bytes of tensor data "
            f"but only {data_bytes:,} follow",
            hint=TRUNCATED_HINT,
        )
    if position < data_bytes:
        raise HeaderError(
            f"{path}: {data_bytes:,} bytes follow the header but it describes only {position:,}",
            hint="The file is damaged or not a safetensors file.",
        )
