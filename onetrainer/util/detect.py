"""What a model, LoRA or embedding file is, and which model family it belongs to, from its header alone.

`convert`, `sample` and `inspect` accept "any file the user has" and must say clearly what it is (or
why it is not usable) before loading anything heavy. What kind of file it is (model, LoRA, embedding)
and its layout are read here; which family it belongs to, each registered family says for itself
(`FamilySpec.recognise`). Evidence is weighed in this order: our own and the community's metadata
(`modelspec.*`, `ss_*`), then the families' recognisers (key names, then tensor shapes), which also pick
among the families an architecture value several of them share names (`modelspec_aliases`). Where the
evidence cannot tell two families apart (tiny test models have widths no real model has),
`family` is None and `reason` says which it could be.

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
from typing import TYPE_CHECKING, Any, NamedTuple

from onetrainer.util.errors import UserError
from onetrainer.util.family import (
    Evidence,
    FamilySpec,
    Objective,
    by_modelspec_architecture,
    by_pipeline_class,
    families,
    family_title,
    find_family,
    kohya_base_model_candidates,
    modelspec_candidates,
    recognise,
)
from onetrainer.util.keymaps.lora import detect_lora_format
from onetrainer.util.missing import missing_path
from onetrainer.util.safetensors_meta import read_safetensors_header

if TYPE_CHECKING:
    import torch

MODEL, LORA, EMBEDDING = "model", "lora", "embedding"
SAFETENSORS, PICKLE = "safetensors", "pickle"
_UNSAFE_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")
"""How torch's refusal names the class or function a pickle would have to import."""
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
    """A registered family's name; None when the evidence cannot tell (or names no registered family)."""
    reason: str
    prediction_type: str | None = None
    """"epsilon" or "v_prediction" where the file says; None where it does not."""
    adapter: str | None = None
    """For a LoRA: "lora", "dora", "loha" or "lokr"."""
    path: Path | None = None

    candidates: tuple[str, ...] = ()
    """When `family` is None: the families it could be."""

    @property
    def spec(self) -> FamilySpec | None:
        return find_family(self.family) if self.family else None

    @property
    def family_titles(self) -> str:
        """The family's title, or the titles of the families it could be, `/`-joined ("" for none)."""
        return "/".join(family_title(name) for name in ((self.family,) if self.family else self.candidates))

    def could_be(self, name: str) -> bool:
        """Whether the file may belong to family `name`: its family, one of its candidates, or none known.

        Families that share an adapter layout (a base model and its distilled variant) leave `family` None
        but still rule the others out."""
        if self.family is not None:
            return self.family == name
        return not self.candidates or name in self.candidates

    @property
    def description(self) -> str:
        if self.family:
            family = self.family_titles
        elif self.candidates:
            family = f"{self.family_titles} (undetermined)"
        else:
            family = "unknown-family"
        what = {MODEL: "model", LORA: f"{self.adapter or 'LoRA'} adapter", EMBEDDING: "embedding"}[self.kind]
        return f"{family} {what} ({self.layout} layout)"


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
        raise refused_pickle(path, error) from None
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


def refused_pickle(path: Path, error: pickle.UnpicklingError) -> UserError:
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
    said = family_from_metadata(metadata)
    lora_format = detect_lora_format(keys)
    if lora_format is not None:
        return _lora_detection(shapes, lora_format, said)
    _refuse_output_embedding(shapes, name)
    if _is_embedding(shapes):
        layout = "a1111" if _a1111_embedding_keys(set(shapes)) else "diffusers"
        return _detection(EMBEDDING, layout, recognise("embedding", shapes), said)
    evidence = recognise("single_file", shapes)
    if evidence is None and said.family is None and not said.candidates:
        shown = ", ".join(keys[:5]) + (" ..." if len(keys) > 5 else "")
        titles = ", ".join(spec.title for spec in families())
        raise UserError(
            f"{name} is not a model, LoRA or embedding this tool knows ({len(keys)} tensors: {shown or 'none'})",
            hint=f"Supported: {titles} checkpoints, kohya/LyCORIS/PEFT LoRAs, A1111/diffusers embeddings.",
        )
    return _detection(MODEL, "single-file", evidence, said)


class Said(NamedTuple):
    """What a file's header metadata says of its family: one family, or the candidates an architecture value
    several families share names (ruling the others out), and the prediction type."""

    family: str | None
    prediction: str | None
    candidates: tuple[str, ...] = ()


def _detection(kind: str, layout: str, evidence: Evidence | None, said: Said, adapter: str | None = None) -> Detection:
    """Metadata wins over key evidence, except where a model's keys name another family of its group; key
    evidence fills in what metadata does not say, and picks among the candidates metadata names (two families'
    embeddings may share their keys and widths)."""
    keyed = evidence.prediction_type if evidence is not None else None
    prediction = said.prediction or keyed
    if said.family is not None and kind == MODEL and evidence is not None and _keys_decide(said.family, evidence):
        reason = f"{evidence.reason}, not the header metadata's {family_title(said.family)}"
        return Detection(kind, layout, evidence.family, reason, prediction, adapter)
    if said.family is not None:
        return Detection(kind, layout, said.family, "header metadata", prediction, adapter)
    if said.candidates:
        return _among(kind, layout, evidence, said, prediction, adapter)
    if evidence is None:
        return Detection(kind, layout, None, f"{layout} {kind} of no known family", said.prediction, adapter)
    return Detection(
        kind, layout, evidence.family, evidence.reason, prediction, adapter, candidates=evidence.candidates
    )


def _keys_decide(said: str, evidence: Evidence) -> bool:
    """Whether a model file's keys overrule the family its metadata names: they name one other family that reads
    the same single-file layout (sizes or variants of one model), which tools writing one architecture value for
    them all mislabel (ComfyUI's CheckpointSave writes one value for every size of a model; sd-scripts one for a
    distilled sibling), while the keys tell them apart by structure."""
    if evidence.family is None or evidence.family == said:
        return False
    named, keyed = find_family(said), find_family(evidence.family)
    if named is None or keyed is None or named.single_file is None:
        return False
    return named.single_file is keyed.single_file


def _among(
    kind: str, layout: str, evidence: Evidence | None, said: Said, prediction: str | None, adapter: str | None
) -> Detection:
    """The family among the metadata's candidates that the keys point to, or those candidates the keys allow."""
    if evidence is not None and evidence.family in said.candidates:
        return Detection(kind, layout, evidence.family, f"header metadata and {evidence.reason}", prediction, adapter)
    allowed = tuple(name for name in said.candidates if evidence is not None and name in evidence.candidates)
    named = allowed or said.candidates
    if len(named) == 1:
        return Detection(kind, layout, named[0], "header metadata", prediction, adapter)
    return Detection(kind, layout, None, "header metadata", prediction, adapter, candidates=named)


def family_from_metadata(metadata: Mapping[str, str]) -> Said:
    """Family (or candidates) and prediction type from `modelspec.*` / `ss_*` keys, where present."""
    family: str | None = None
    prediction: str | None = None
    architecture = metadata.get("modelspec.architecture", "")
    named = by_modelspec_architecture(architecture)
    if named is not None:
        family, prediction = named[0].name, named[1]
    version = metadata.get("ss_base_model_version", "")
    versioned = kohya_base_model_candidates(version.removesuffix("_v")) if version else ()
    if len(versioned) == 1:
        family = family or versioned[0].name
    if prediction is None and versioned and all(spec.objective is Objective.DDPM for spec in versioned):
        prediction = "v_prediction" if version.endswith("_v") else "epsilon"  # sd-scripts appends "_v" for v
    spec_prediction = metadata.get("modelspec.prediction_type")
    if spec_prediction in ("v", "v_prediction", "epsilon"):
        prediction = "epsilon" if spec_prediction == "epsilon" else "v_prediction"
    if family is not None:
        return Said(family, prediction)
    return Said(None, prediction, _shared(modelspec_candidates(architecture), tuple(s.name for s in versioned)))


def _shared(first: tuple[str, ...], second: tuple[str, ...]) -> tuple[str, ...]:
    """The families both metadata values allow, where both name some; else those the one that does names."""
    if first and second:
        return tuple(name for name in first if name in second) or first
    return first or second


def _embedding_keys() -> frozenset[str]:
    return frozenset(
        key
        for spec in families()
        for c in spec.text_encoders
        if c.embedding_key
        for key in (c.embedding_key, *c.embedding_aliases)
    )


def _a1111_embedding_keys(keys: set[str]) -> bool:
    return keys <= _embedding_keys() or all(k.startswith("string_to_param.") for k in keys)


def _refuse_output_embedding(shapes: Mapping[str, tuple[int, ...]], name: str) -> None:
    """OneTrainer's output embeddings (`clip_l_out`, `t5_out`) hold vectors added at a text encoder's output,
    not token vectors: read as an input embedding (a lone `clip_l_out` would pass for one), they would
    condition on other values without a word."""
    if any(len(shape) not in (1, 2) for shape in shapes.values()):
        return
    known = _embedding_keys()
    outputs = sorted(key for key in shapes if key.endswith("_out") and key.removesuffix("_out") in known)
    if outputs:
        raise UserError(
            f'{name} is an output embedding ({", ".join(outputs)}: OneTrainer\'s "output embedding", vectors '
            "applied at the text encoder's output); onetrainer reads and trains input embeddings only",
            hint="Use it in OneTrainer, or train the embedding again without OneTrainer's output embedding option.",
        )


def _is_embedding(shapes: Mapping[str, tuple[int, ...]]) -> bool:
    if not shapes or len(shapes) > 3 or any(len(shape) not in (1, 2) for shape in shapes.values()):
        return False
    return _a1111_embedding_keys(set(shapes)) or len(shapes) == 1


def _lora_detection(shapes: Mapping[str, tuple[int, ...]], lora_format: str, said: Said) -> Detection:
    keys = list(shapes)
    if any(".lora.down." in k or "_lora.down." in k for k in keys):
        layout = "diffusers-legacy"
    else:
        layout = LORA_LAYOUTS.get(lora_format, lora_format)
    adapter = LORA_ADAPTERS.get(lora_format, "lora")
    if adapter == "lora" and any(k.endswith(DORA_SUFFIXES) for k in keys):
        adapter = "dora"
    evidence = recognise("lora", shapes) if layout in ("kohya", "peft") else None
    return _detection(LORA, layout, evidence, said, adapter)


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
    configs = {
        name: _read_json(path / name / "config.json") or {} for name, value in index.items() if isinstance(value, list)
    }
    configs["scheduler"] = _read_json(path / "scheduler" / "scheduler_config.json") or {}
    return detect_pipeline(index, configs)


def detect_pipeline(index: Mapping[str, Any], configs: Mapping[str, Mapping[str, Any]]) -> Detection:
    """A diffusers pipeline from its `model_index.json` and its components' configs."""
    pipeline = str(index.get("_class_name", ""))
    prediction = configs.get("scheduler", {}).get("prediction_type")
    candidates = by_pipeline_class(pipeline)
    if not candidates:
        return Detection(
            MODEL, "diffusers", None, f"pipeline class {pipeline or 'missing'} of no known family", prediction
        )
    evidence = recognise("configs", configs, candidates) if len(candidates) > 1 else None
    if evidence is None:
        evidence = Evidence(candidates[0].name, f"pipeline class {pipeline}") if len(candidates) == 1 else None
    if evidence is None:
        names = tuple(spec.name for spec in candidates)
        return Detection(MODEL, "diffusers", None, f"pipeline class {pipeline}", prediction, candidates=names)
    return Detection(MODEL, "diffusers", evidence.family, evidence.reason, prediction, candidates=evidence.candidates)


def pipeline_config_files(index: Mapping[str, Any]) -> list[str]:
    """The config files `detect_pipeline` reads, relative to the pipeline folder (for hub repos).

    Only the components of the families whose pipeline class this is, and only those present: a hub
    repo has no config for an absent (`[null, null]`) part, and its feature extractor's is named otherwise.
    """
    names = {c.name for spec in by_pipeline_class(str(index.get("_class_name", ""))) for c in spec.components}
    present = [name for name, value in index.items() if name in names and isinstance(value, list) and value[0]]
    return [f"{name}/config.json" for name in present] + ["scheduler/scheduler_config.json"]


def _read_json(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise UserError(f"cannot read {path}: {error}", where=str(path)) from None
    return data if isinstance(data, dict) else None


def check_adapter_file(path: str | os.PathLike[str], kind: str, *, where: str) -> None:
    """Refuse, from its header alone and so before any weights load, a file given as a LoRA or an embedding
    (`kind`) that is unreadable or another kind of file (whether it fits the model is told once it loads)."""
    detection = detect_path(path)
    named = {MODEL: "a model", LORA: "a LoRA", EMBEDDING: "an embedding"}
    if detection.kind != kind:
        raise UserError(
            f"{path} is {named[detection.kind]} ({detection.reason}), not {named[kind]}",
            where=where,
            hint=f"Give {named[kind]} file for `{where}`.",
        )
