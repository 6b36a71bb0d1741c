"""What a model, LoRA or embedding file is, and which model family it belongs to, from its header alone.

`convert`, `sample` and `inspect` accept "any file the user has" and must say clearly what it is (or
why it is not usable) before loading anything heavy. Evidence is weighed in this order: our own and
the community's metadata (`modelspec.*`, `ss_*`), then key names, then tensor shapes (cross-attention
and text-encoder widths). Tiny test models have widths no real family has, so for them only names
and metadata can tell SD 1.x from 2.x; `family` is then None and `reason` says so.

Pickles (.ckpt/.pt/.bin) are read here too, only through `torch.load(weights_only=True)`: unpickling
anything else can run arbitrary code, so such files are refused with an explanation.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from onetrainer.util.enums import ModelType
from onetrainer.util.errors import UserError
from onetrainer.util.keymaps.lora import detect_lora_format
from onetrainer.util.keymaps.single_file import detect_single_file_family
from onetrainer.util.missing import missing_path
from onetrainer.util.safetensors_meta import ARCHITECTURES, SS_BASE_MODEL_VERSION, read_safetensors_header

if TYPE_CHECKING:
    import torch

MODEL, LORA, EMBEDDING = "model", "lora", "embedding"
SAFETENSORS, PICKLE = "safetensors", "pickle"
_UNSAFE_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")
"""How torch's refusal names the class or function a pickle would have to import."""
WIDTH_FAMILY = {768: "sd15", 1024: "sd2", 2048: "sdxl"}
"""Cross-attention (context) width of each UNet family; SD 1.x/2.x text encoders have the same widths."""
EMBEDDING_WIDTHS = {768: "sd15", 1024: "sd2"}
EMBEDDING_KEYS = frozenset({"emb_params", "clip_l", "clip_g", "t5"})
LORA_FOLDER_FILES = ("pytorch_lora_weights.safetensors",)
LORA_LAYOUTS = {
    "kohya": "kohya",
    "lycoris-loha": "kohya",
    "lycoris-lokr": "kohya",
    "diffusers": "peft",
    "peft": "peft-bare",
}
"""`detect_lora_format` names -> our layout names (our `peft` is diffusers' component-prefixed file)."""
LORA_ADAPTERS = {"lycoris-loha": "loha", "lycoris-lokr": "lokr"}
DORA_SUFFIXES = (".dora_scale", ".lora_magnitude_vector", ".input_magnitude", ".lora_magnitude_vector.weight")
"""DoRA magnitudes: kohya's, peft's per-row and our per-column ones, and a text encoder's in a diffusers file."""


@dataclass(frozen=True)
class Detection:
    """What a file is. `layout` uses the save-format names (`diffusers`, `single-file`, `kohya`, `peft`, `a1111`)."""

    kind: str
    """MODEL, LORA or EMBEDDING."""
    layout: str
    family: str | None
    """"sd15", "sd2", "sdxl", or another family's name ("flux", ...); None when the evidence cannot tell."""
    reason: str
    prediction_type: str | None = None
    """"epsilon" or "v_prediction" where the file says; None where it does not."""
    adapter: str | None = None
    """For a LoRA: "lora", "dora", "loha" or "lokr"."""
    path: Path | None = None

    @property
    def model_type(self) -> ModelType | None:
        return next((t for t in ModelType if t.value == self.family), None)

    @property
    def description(self) -> str:
        family = {"sd15": "SD 1.x", "sd2": "SD 2.x", "sdxl": "SDXL"}.get(self.family or "", self.family)
        what = {MODEL: "model", LORA: f"{self.adapter or 'LoRA'} adapter", EMBEDDING: "embedding"}[self.kind]
        return f"{family or 'SD 1.x/2.x (undetermined)'} {what} ({self.layout} layout)"


def sniff_container(path: Path) -> str:
    """SAFETENSORS or PICKLE, from the first bytes (suffixes lie: `.bin` and `.pt` are used for both)."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(9)
    except OSError as error:
        raise UserError(f"cannot read {path}: {error.strerror}", where=str(path)) from None
    if len(head) == 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < os.path.getsize(path):
        return SAFETENSORS
    if head.startswith((b"PK\x03\x04", b"\x80")):
        return PICKLE
    raise UserError(
        f"{path.name} is neither a safetensors file nor a PyTorch checkpoint",
        where=str(path),
        hint="Expected a .safetensors, .ckpt or .pt weights file, or a diffusers model folder.",
    )


def load_pickle_weights(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Flat `{dotted.key: tensor}` and the scalar entries (as strings) of a pickled checkpoint.

    A Lightning `state_dict` wrapper is unwrapped; nested dicts of tensors (A1111 embeddings'
    `string_to_param`) are flattened with dots.
    """
    try:
        data = _load_weights_only(path)
    except pickle.UnpicklingError as error:
        raise _refused(path, error) from None
    except (RuntimeError, EOFError, ValueError, OSError) as error:
        raise UserError(
            f"cannot read {path.name}: it is damaged or not a PyTorch checkpoint ({_first_sentence(error)})",
            where=str(path),
            hint="Download or copy the file again; a complete checkpoint is a zip archive or a plain pickle.",
        ) from None
    if not isinstance(data, dict):
        raise UserError(f"{path.name} holds a {type(data).__name__}, not a dict of tensors", where=str(path))
    if isinstance(data.get("state_dict"), dict):
        scalars = {k: v for k, v in data.items() if k != "state_dict"}
        data = data["state_dict"]
    else:
        scalars = {}
    tensors: dict[str, torch.Tensor] = {}
    _flatten(data, "", tensors, scalars)
    metadata = {str(k): str(v) for k, v in scalars.items() if isinstance(v, (str, int, float, bool))}
    return tensors, metadata


def _load_weights_only(path: Path) -> Any:
    """`torch.load(weights_only=True)`, memory-mapped where the file allows, without torch's warnings.

    torch warns (a raw `UserWarning` above our message) about pickle protocols its safe unpickler may
    not handle; whether it handles them shows in the result, so the warning only adds noise.
    """
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as error:
            if "mmap" not in str(error):
                raise
            return torch.load(path, map_location="cpu", weights_only=True)


def _refused(path: Path, error: pickle.UnpicklingError) -> UserError:
    """Our explanation of a refused pickle, naming the Python object it holds when torch says which.

    torch's own message suggests loading again without `weights_only`, which runs the file's code:
    only the object's name is taken from it.
    """
    found = _UNSAFE_GLOBAL.search(str(error))
    holds = f" ({found.group(1)})" if found else ""
    return UserError(
        f"{path.name} is refused: besides tensors it holds Python objects{holds}, and rebuilding them would "
        "run code stored in the file",
        where=str(path),
        hint="Use a .safetensors version of this file (most models and LoRAs are published as one); "
        "onetrainer reads pickles only when they hold nothing but tensors and plain values.",
    )


def _first_sentence(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return text.split(". ")[0].rstrip(".") or type(error).__name__


def _flatten(data: Mapping[str, Any], prefix: str, tensors: dict[str, Any], scalars: dict[str, Any]) -> None:
    import torch

    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, torch.Tensor):
            tensors[name] = value
        elif isinstance(value, Mapping):
            _flatten(value, f"{name}.", tensors, scalars)
        elif not prefix:
            scalars[name] = value


def read_header(path: Path) -> tuple[dict[str, tuple[int, ...]], dict[str, str]]:
    """(`{key: shape}`, metadata) of a weights file: the safetensors header, or a weights-only unpickle."""
    if sniff_container(path) == SAFETENSORS:
        metadata, entries = read_safetensors_header(path)
        return {key: shape for key, (_, shape) in entries.items()}, metadata
    tensors, metadata = load_pickle_weights(path)
    return {key: tuple(t.shape) for key, t in tensors.items()}, metadata


def detect_path(path: str | os.PathLike[str]) -> Detection:
    """Detect a local file or diffusers folder; raises `UserError` for anything that is none of ours."""
    path = Path(path).expanduser()
    if not path.exists():
        raise missing_path(path, what="file or folder", where=None)
    if path.is_dir():
        detection = detect_folder(path)
        return detection if detection.path is not None else _with_path(detection, path)
    shapes, metadata = read_header(path)
    return _with_path(detect_weights(shapes, metadata, name=path.name), path)


def _with_path(detection: Detection, path: Path) -> Detection:
    return Detection(**{**detection.__dict__, "path": path})


def detect_weights(
    shapes: Mapping[str, tuple[int, ...]], metadata: Mapping[str, str], *, name: str = "file"
) -> Detection:
    """Detect from key names, shapes and header metadata."""
    keys = list(shapes)
    meta_family, meta_prediction = _family_from_metadata(metadata)
    lora_format = detect_lora_format(keys)
    if lora_format is not None:
        return _lora_detection(shapes, lora_format, meta_family, meta_prediction)
    if _is_embedding(shapes):
        layout, family, reason = _embedding_family(shapes)
        return Detection(EMBEDDING, layout, meta_family or family, _why(meta_family, reason), meta_prediction)
    info = detect_single_file_family(shapes)
    if info.family is None and not info.components:
        shown = ", ".join(keys[:5]) + (" ..." if len(keys) > 5 else "")
        raise UserError(
            f"{name} is not a model, LoRA or embedding this tool knows ({len(keys)} tensors: {shown or 'none'})",
            hint="Supported: SD 1.x/2.x checkpoints, kohya/LyCORIS/PEFT LoRAs, A1111/diffusers embeddings.",
        )
    prediction = meta_prediction or ("v_prediction" if info.prediction_type == "v" else None)
    return Detection(MODEL, "single-file", meta_family or info.family, _why(meta_family, info.reason), prediction)


def _why(meta_family: str | None, reason: str) -> str:
    return "header metadata" if meta_family else reason


def _family_from_metadata(metadata: Mapping[str, str]) -> tuple[str | None, str | None]:
    """Family and prediction type from `modelspec.*` / `ss_*` keys, where present."""
    family = prediction = None
    arch = metadata.get("modelspec.architecture", "").split("/")[0]
    for (name, v_pred), spelled in ARCHITECTURES.items():
        if spelled == arch:
            family = name
            if ARCHITECTURES[(name, not v_pred)] != spelled:
                prediction = "v_prediction" if v_pred else "epsilon"
    version = metadata.get("ss_base_model_version", "")
    if version:
        named = next((f for f, v in SS_BASE_MODEL_VERSION.items() if version.startswith(v)), version)
        family = family or named
        if prediction is None and named in ("sd15", "sd2"):  # sd-scripts appends "_v" for v-parameterization
            prediction = "v_prediction" if version.endswith("_v") else "epsilon"
    spec_prediction = metadata.get("modelspec.prediction_type")
    if spec_prediction in ("v", "v_prediction", "epsilon"):
        prediction = "epsilon" if spec_prediction == "epsilon" else "v_prediction"
    return family, prediction


def _is_embedding(shapes: Mapping[str, tuple[int, ...]]) -> bool:
    if not shapes or len(shapes) > 3 or any(len(shape) not in (1, 2) for shape in shapes.values()):
        return False
    keys = set(shapes)
    return keys <= EMBEDDING_KEYS or all(k.startswith("string_to_param.") for k in keys) or len(keys) == 1


def _embedding_family(shapes: Mapping[str, tuple[int, ...]]) -> tuple[str, str | None, str]:
    keys = set(shapes)
    if "clip_g" in keys:
        return "a1111", "sd3" if "t5" in keys else "sdxl", "per-encoder vectors (clip_g)"
    if "t5" in keys:
        return "a1111", "flux", "per-encoder vectors (clip_l, t5)"
    key = next(iter(sorted(keys)))
    layout = "a1111" if key == "emb_params" or key.startswith("string_to_param.") else "diffusers"
    width = shapes[key][-1]
    family = EMBEDDING_WIDTHS.get(width)
    return layout, family, f"vector width {width}" if family else f"vector width {width} matches no known family"


def _lora_detection(
    shapes: Mapping[str, tuple[int, ...]], lora_format: str, meta_family: str | None, meta_prediction: str | None
) -> Detection:
    keys = list(shapes)
    if any(".lora.down." in k or "_lora.down." in k for k in keys):
        layout = "diffusers-legacy"
    else:
        layout = LORA_LAYOUTS.get(lora_format, lora_format)
    family, reason = meta_family, "header metadata"
    if family is None and layout in ("kohya", "peft"):
        family, reason = _lora_family(shapes)
    adapter = LORA_ADAPTERS.get(lora_format, "lora")
    if adapter == "lora" and any(k.endswith(DORA_SUFFIXES) for k in keys):
        adapter = "dora"
    return Detection(LORA, layout, family, reason if family else f"{layout} LoRA", meta_prediction, adapter)


def _lora_family(shapes: Mapping[str, tuple[int, ...]]) -> tuple[str | None, str]:
    keys = list(shapes)
    if any(k.startswith(("lora_te1_", "lora_te2_", "text_encoder_2.")) for k in keys):
        return "sdxl", "two text encoders"
    if any(
        k.startswith(("lora_unet_input_blocks_", "lora_unet_output_blocks_", "lora_unet_middle_block_")) for k in keys
    ):
        return "sdxl", "LDM UNet module names (sd-scripts' SDXL naming)"
    if any(
        k.startswith(("lora_unet_double_blocks_", "lora_unet_single_blocks_", "transformer.", "lora_transformer_"))
        for k in keys
    ):
        return "flux", "transformer (DiT) module names"
    for marker, what in (
        ("attn2_to_k", "cross-attention"),
        ("attn2.to_k", "cross-attention"),
        ("q_proj", "text encoder"),
    ):
        width = next((s[1] for k, s in shapes.items() if marker in k and _is_down(k) and len(s) >= 2), None)
        if width in WIDTH_FAMILY:
            return WIDTH_FAMILY[width], f"{what} width {width}"
    proj_in = next((s for k, s in shapes.items() if "proj_in" in k and _is_down(k)), None)
    if proj_in is not None:
        return ("sd2", "linear proj_in") if len(proj_in) == 2 else ("sd15", "conv proj_in")
    return None, "SD 1.x or 2.x module names; the tensor widths do not say which"


def _is_down(key: str) -> bool:
    return key.endswith((".lora_down.weight", ".lora_A.weight", ".hada_w1_b", ".hada_w2_b"))


def detect_folder(path: Path) -> Detection:
    """A diffusers pipeline folder (or a folder holding one diffusers LoRA file)."""
    for name in LORA_FOLDER_FILES:
        if (path / name).is_file():
            return detect_path(path / name)
    index = _read_json(path / "model_index.json")
    if index is None:
        raise UserError(
            f"{path} is a folder but not a diffusers model (no model_index.json)",
            hint="Pass a diffusers pipeline folder, or a .safetensors/.ckpt file.",
        )
    pipeline = str(index.get("_class_name", ""))
    scheduler = _read_json(path / "scheduler" / "scheduler_config.json") or {}
    prediction = scheduler.get("prediction_type")
    if "XL" in pipeline:
        return Detection(MODEL, "diffusers", "sdxl", f"pipeline class {pipeline}", prediction)
    if pipeline != "StableDiffusionPipeline":
        return Detection(MODEL, "diffusers", pipeline or None, f"pipeline class {pipeline or 'missing'}", prediction)
    family, reason = family_from_unet_config(_read_json(path / "unet" / "config.json") or {})
    return Detection(MODEL, "diffusers", family, reason, prediction)


def family_from_unet_config(config: Mapping[str, Any]) -> tuple[str | None, str]:
    """sd15 / sd2 / sdxl from a UNet config: the context width, else (tiny models) the projection type."""
    width = config.get("cross_attention_dim")
    if config.get("addition_embed_type") == "text_time":
        return "sdxl", "UNet with text_time conditioning"
    if width in WIDTH_FAMILY:
        return WIDTH_FAMILY[width], f"cross-attention width {width}"
    if "use_linear_projection" in config:
        linear = bool(config["use_linear_projection"])
        return ("sd2", "linear attention projections") if linear else ("sd15", "conv attention projections")
    return None, "UNet config without a known width"


def _read_json(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise UserError(f"cannot read {path}: {error}", where=str(path)) from None
    return data if isinstance(data, dict) else None
