"""Read a LoRA file of any common layout into one neutral form, and check it fits a model.

The neutral form is the one `onetrainer.util.keymaps.lora` converts between: peft parameter names
with the diffusers component in front (`unet.<module>.lora_A.weight`) and a kohya-semantics alpha per
module. Users pick LoRAs from model sites, so a file made for another architecture is expected input:
it is refused with a message saying which architecture it is for, never half-applied.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from onetrainer.model.adapters.files import read_tensor_file
from onetrainer.util.errors import UserError

if TYPE_CHECKING:
    import torch

    from onetrainer.model.diffusion import DiffusionModel
    from onetrainer.util.detect import Detection
    from onetrainer.util.family import FamilySpec
    from onetrainer.util.keymaps.fused_lora import FusedAdapter


@dataclass
class LoraFile:
    path: Path
    format: str
    tensors: dict[str, torch.Tensor]
    alphas: dict[str, float]
    architecture: Mapping[str, Mapping[str, Any]] | None = None
    """The component configs its kohya names were read for (given, or recorded in the file), if any."""
    warnings: list[str] = field(default_factory=list)
    """What the user should know about how it was read (a file marked for a sibling model, for sampling)."""
    fused: list[FusedAdapter] = field(default_factory=list)
    """For sampling only: adapters on original fused layers without per-part factors (`LoraNaming.whole_fused`),
    merged into their parts' weights joined."""

    @property
    def components(self) -> set[str]:
        return {key.partition(".")[0] for key in self.tensors}

    @property
    def kind(self) -> str:
        names = " ".join(self.tensors)
        if ".hada_" in names:
            return "loha"
        if ".lokr_" in names:
            return "lokr"
        return "dora" if "lora_magnitude_vector" in names else "lora"


def read_lora_file(
    path: str | Path,
    spec: FamilySpec,
    *,
    configs: Mapping[str, Mapping[str, Any]] | None = None,
    sampling: bool = False,
) -> LoraFile:
    """Read a kohya / LyCORIS, diffusers or bare peft LoRA for a model of the family `spec`.

    `configs` are the component configs of the model it is for (kohya names may depend on its block
    counts, see `LoraNaming.for_model`); None takes those the file records, else the family's released
    architecture. `sampling` reads a file whose header names a family of this one's architecture (see
    `_same_architecture`) with a warning, as ComfyUI applies it; training from it is refused, since
    what it was trained on differs.
    """
    from onetrainer.util.detect import LORA, detect_path
    from onetrainer.util.keymaps.engine import KeyMapError
    from onetrainer.util.keymaps.lora import detect_lora_format, kohya_renamed, recorded_architecture

    file = Path(path).expanduser()
    detection = detect_path(file)
    if detection.kind != LORA:
        raise UserError(f"{file.name} is not a LoRA: it is a {detection.description}", where=str(file))
    tensors, metadata = read_tensor_file(file)
    warnings = _family_warnings(file, detection, spec, tensors, sampling=sampling)
    architecture = dict(configs) if configs is not None else recorded_architecture(metadata)
    layout = detect_lora_format(tensors)
    fused: list[FusedAdapter] = []
    try:
        if layout in ("kohya", "lycoris-loha", "lycoris-lokr") and spec.lora_naming is not None:
            naming = spec.lora_naming if architecture is None else spec.lora_naming.for_model(architecture)
            renamed, alphas = kohya_renamed(tensors, naming)
            if sampling:  # merging applies a fused layer's delta whole; training and converting need its parts'
                renamed, alphas, fused = naming.whole_fused(renamed, alphas)
            peft, alphas = naming.split(renamed, alphas)
        elif layout == "diffusers":
            peft, alphas = _diffusers(tensors, metadata)
        elif layout == "peft":
            denoiser = spec.denoiser.name
            peft, alphas = _diffusers({f"{denoiser}.{key}": value for key, value in tensors.items()}, metadata)
        else:
            raise UserError(f"LoRA layout {layout!r} is not supported for {spec.title}", where=str(file))
    except KeyMapError as error:
        raise UserError(f"cannot read this LoRA: {error.message}", where=str(file), hint=error.hint) from None
    return LoraFile(
        path=file,
        format=layout,
        tensors=peft,
        alphas=alphas,
        architecture=architecture,
        warnings=warnings,
        fused=fused,
    )


def _family_warnings(
    file: Path, detection: Detection, spec: FamilySpec, tensors: Mapping[str, torch.Tensor], *, sampling: bool
) -> list[str]:
    """Refuse a file for another family; for sampling, warn of one marked for a family of the same architecture."""
    if detection.could_be(spec.name):
        return []
    if sampling and _same_architecture(detection, spec, tensors):
        return [
            f"this LoRA is marked for {detection.family_titles} ({detection.reason}); this {spec.title} model has "
            "its architecture, so it is applied as ComfyUI applies it, with what it learned on the other model"
        ]
    raise UserError(
        f"this LoRA is for {detection.family_titles} ({detection.reason}), not for this {spec.title} model",
        where=str(file),
        hint="Use it with a model of the architecture it was trained on.",
    )


def _same_architecture(detection: Detection, spec: FamilySpec, tensors: Mapping[str, torch.Tensor]) -> bool:
    """Whether the header names only families sd-scripts gives `spec`'s base-model version (one architecture,
    such as a distilled model and its base) and the keys alone allow `spec` (a LoRA of a layer only the other
    has does not)."""
    from onetrainer.util.detect import detect_weights
    from onetrainer.util.family import get_family

    named = (detection.family,) if detection.family is not None else detection.candidates
    if not named or any(get_family(name).kohya_base_model_version != spec.kohya_base_model_version for name in named):
        return False
    return detect_weights({key: tuple(tensor.shape) for key, tensor in tensors.items()}, {}).could_be(spec.name)


def _diffusers(
    tensors: dict[str, torch.Tensor], metadata: dict[str, str]
) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """diffusers files keep alpha in a JSON LoraConfig per component; without one, alpha = rank."""
    from peft.utils.other import get_pattern_key

    from onetrainer.util.keymaps.lora import module_rank, split_peft_key
    from onetrainer.util.keymaps.lora_peft import DIFFUSERS_METADATA_KEY, from_diffusers_keys

    tensors = from_diffusers_keys(_current_names(tensors))
    packed = json.loads(metadata.get(DIFFUSERS_METADATA_KEY, "{}"))
    stated = _alpha_keys(tensors)
    modules: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in tensors.items():
        if key.removesuffix(".alpha") in stated:
            continue
        module, param = split_peft_key(key)
        modules.setdefault(module, {})[param] = tensor
    alphas: dict[str, float] = {}
    for module, params in modules.items():
        if module in stated:
            alphas[module] = stated[module]
            continue
        component, _, path = module.partition(".")
        rank = module_rank(params)
        patterns = packed.get(f"{component}.alpha_pattern") or {}
        # peft's own rule: a key matches the end of the layer path (a whole name, or a regex over its last parts)
        alpha = patterns.get(get_pattern_key(list(patterns), path))
        alpha = alpha if alpha is not None else packed.get(f"{component}.lora_alpha")
        alpha = float(alpha) if alpha is not None else float(rank or 1)
        if packed.get(f"{component}.use_rslora") and rank:
            alpha *= math.sqrt(rank)  # rsLoRA scales by alpha / sqrt(rank); ours is alpha / rank
        alphas[module] = alpha
    return {key: tensor for key, tensor in tensors.items() if key.removesuffix(".alpha") not in stated}, alphas


OLD_DIFFUSERS_NAMES = (
    *((f".processor.to_{p}_lora.", f".to_{p}.lora.") for p in "qkv"),
    (".processor.to_out_lora.", ".to_out.0.lora."),
    *((f".self_attn.to_{p}_lora.", f".self_attn.{p}_proj.lora.") for p in "qkv"),
    (".self_attn.to_out_lora.", ".self_attn.out_proj.lora."),
    (".lora_linear_layer.", ".lora."),
    (".lora.down.weight", ".lora_A.weight"),
    (".lora.up.weight", ".lora_B.weight"),
)
"""diffusers' names before peft (attention processors' `to_q_lora`, `LoRACompatibleLinear`'s `.lora`, the text
encoder's `lora_linear_layer`) -> today's, in order, as its `load_lora_weights` still converts them."""


def _current_names(tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    def renamed(key: str) -> str:
        for old, new in OLD_DIFFUSERS_NAMES:
            key = key.replace(old, new)
        return key

    return {renamed(key): tensor for key, tensor in tensors.items()}


def _alpha_keys(tensors: Mapping[str, torch.Tensor]) -> dict[str, float]:
    """Modules with a kohya-style `<module>.alpha` beside their factors (TheLastBen's and other trainers' diffusers
    files): diffusers moves them into its network alphas and ComfyUI reads them, so they win over the header."""
    from onetrainer.util.keymaps.lora import PEFT_TO_KOHYA

    params = sorted(PEFT_TO_KOHYA, key=len, reverse=True)
    modules = {key[: -len(p) - 1] for key in tensors for p in params if key.endswith("." + p)}
    return {
        key.removesuffix(".alpha"): float(tensor.item())
        for key, tensor in tensors.items()
        if key.endswith(".alpha") and key.removesuffix(".alpha") in modules and tensor.numel() == 1
    }


def matched_to(
    model: DiffusionModel, tensors: Mapping[str, torch.Tensor], alphas: Mapping[str, float]
) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """A LoRA's (tensors, alphas) with its layer paths as `model` names them. A CLIP text encoder's layers sit
    under `text_model.` or not depending on the transformers version that saved the file (transformers >= 5.6
    flattened CLIPTextModel), so a path the model lacks is tried with that level added or removed."""
    from onetrainer.util.keymaps.lora import split_peft_key

    names = {f"{name}.{path}" for name, root in model.components.items() for path, _ in root.named_modules()}

    def aligned(module: str) -> str:
        if module in names:
            return module
        component, _, path = module.partition(".")
        other = path.removeprefix("text_model.") if path.startswith("text_model.") else f"text_model.{path}"
        return f"{component}.{other}" if f"{component}.{other}" in names else module

    def renamed(key: str) -> str:
        module, param = split_peft_key(key)
        return f"{aligned(module)}.{param}"

    return {renamed(key): tensor for key, tensor in tensors.items()}, {aligned(m): a for m, a in alphas.items()}


def check_lora_fits(model: DiffusionModel, lora: LoraFile) -> None:
    """Every adapted layer must exist in `model` with the shape the file's factors imply."""
    from onetrainer.util.keymaps.lora import split_peft_key

    modules: dict[str, torch.nn.Module] = {}
    for component in lora.components:
        root = model.components.get(component)
        if root is None:
            raise UserError(
                f"this LoRA adapts a {component}, which {model.spec.title} models do not have",
                where=str(lora.path),
                hint=_made_for(lora),
            )
        modules.update({f"{component}.{name}": child for name, child in root.named_modules()})
    for key, tensor in lora.tensors.items():
        module, param = split_peft_key(key)
        target = modules.get(module)
        weight = getattr(target, "weight", None)
        if weight is None:
            raise UserError(
                f"this LoRA adapts {module}, which this {model.spec.title} model does not have",
                where=str(lora.path),
                hint=_made_for(lora),
            )
        if param == "lora_A.weight" and tensor.shape[1:] != weight.shape[1:]:
            _mismatch(model, lora, module, tensor, weight)
        if param == "lora_B.weight" and tensor.shape[0] != weight.shape[0]:
            _mismatch(model, lora, module, tensor, weight)


def _mismatch(model: DiffusionModel, lora: LoraFile, module: str, tensor: torch.Tensor, weight: torch.Tensor) -> None:
    raise UserError(
        f"this LoRA does not fit this {model.spec.title} model: {module} is {tuple(weight.shape)} "
        f"here but the LoRA's factor is {tuple(tensor.shape)}",
        where=str(lora.path),
        hint=_made_for(lora),
    )


def _made_for(lora: LoraFile) -> str:
    """Name the architecture the file's keys and widths point to, where they are telling."""
    from onetrainer.util.family import family_title, recognise

    evidence = recognise("lora", {key: tuple(tensor.shape) for key, tensor in lora.tensors.items()})
    if evidence is not None and evidence.family is not None:
        return f"It was made for {family_title(evidence.family)} ({evidence.reason})."
    return "It was made for a model of another architecture; use it with the model it was trained on."
