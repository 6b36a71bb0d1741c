"""Load a Stable Diffusion 1.x / 2.x base model from any source into a `StableDiffusionModel`.

Sources: a diffusers folder, a hub id (through diffusers'/transformers' own `from_pretrained`, so the
HF cache and `HF_HUB_OFFLINE` behave as users expect), an original single file (.safetensors, or a
.ckpt readable with `weights_only=True`), or `tiny:<family>`, the built-in tiny random-weight model.
The family is detected from the source and checked against the one asked for.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from onetrainer.model.stable_diffusion import StableDiffusionModel
from onetrainer.model_loader.architecture import load_tokenizer, resolve_architecture, tokenizer_mismatch
from onetrainer.model_loader.checkpoint import WeightsFile
from onetrainer.model_loader.hub import HUB, TINY, TINY_KINDS, hub_errors, source_kind
from onetrainer.model_loader.single_file import build_components, single_file_state_dicts
from onetrainer.model_loader.vae import load_vae
from onetrainer.util.config.model import ModelConfig
from onetrainer.util.config.types import TINY_PREFIX
from onetrainer.util.detect import LORA, MODEL, Detection, detect_path
from onetrainer.util.enums import ModelType, PredictionType
from onetrainer.util.errors import UserError
from onetrainer.util.registry import ModuleKind, register

if TYPE_CHECKING:
    import torch

SD_TYPES = (ModelType.SD15, ModelType.SD2)
FAMILY_NAMES = {"sd15": "SD 1.x", "sd2": "SD 2.x", "sdxl": "SDXL"}
DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}


def torch_dtype(dtype: object) -> torch.dtype:
    """fp32/fp16/bf16 (a string or a config enum) or a torch dtype -> the torch dtype."""
    import torch

    if isinstance(dtype, torch.dtype):
        return dtype
    name = getattr(dtype, "value", dtype)
    if name not in DTYPES:
        raise UserError(f"unknown dtype {name!r}", hint=f"Use one of: {', '.join(DTYPES)}.")
    return getattr(torch, DTYPES[name])


@register(ModuleKind.LOADER, *SD_TYPES)
class StableDiffusionLoader:
    """The registered loader of the SD 1.x and 2.x families."""

    def load(self, model_config: ModelConfig, *, device: str = "cpu") -> StableDiffusionModel:
        if model_config.base is None:
            raise UserError("model.base is not set", hint="Name a diffusers folder, a checkpoint file or a hub id.")
        return load_stable_diffusion(
            model_config.base,
            model_type=model_config.type,
            vae=model_config.vae,
            tokenizer=model_config.tokenizer,
            config=model_config.config,
            prediction_type=model_config.prediction_type,
            dtype=model_config.dtype,
            device=device,
        )


def load_stable_diffusion(
    source: str | Path,
    *,
    model_type: ModelType | None = None,
    vae: str | Path | None = None,
    tokenizer: str | Path | None = None,
    config: str | Path | None = None,
    prediction_type: PredictionType | str = PredictionType.AUTO,
    dtype: object = "fp32",
    device: str = "cpu",
) -> StableDiffusionModel:
    """Load a base model; `model_type=None` detects the family, anything else must match it.

    `vae` replaces the model's VAE; `tokenizer` and `config` (architecture) only matter for single
    files. `prediction_type` overrides what the model says (its scheduler config or file metadata).
    """
    source = str(source)
    wanted = PredictionType(getattr(prediction_type, "value", prediction_type))
    dtype = torch_dtype(dtype)
    kind = source_kind(source, where="model.base")
    if kind == TINY:
        parts = _from_tiny(source, model_type)
    elif kind == HUB:
        parts = _from_pretrained(source, source, _hub_family(source, model_type), dtype, hub=True)
    else:
        path = Path(source).expanduser()
        detection = detect_path(path)
        family = check_family(detection, model_type)
        if path.is_dir():
            parts = _from_pretrained(str(path), source, family, dtype, hub=False)
        else:
            parts = _from_single_file(path, detection, family, wanted, config, tokenizer, dtype)
    if vae is not None:
        parts["vae"] = load_vae(str(vae), dict(parts["vae"].config), dtype)
    prediction = parts["prediction"] if wanted is PredictionType.AUTO else wanted.value
    return _assemble(parts, source, prediction, device, dtype)


def check_family(detection: Detection, wanted: ModelType | None) -> ModelType:
    """The SD family of a detected file, or a user error saying what the file is instead."""
    what = detection.path.name if detection.path else "the model"
    if detection.kind != MODEL:
        noun = "a LoRA" if detection.kind == LORA else "an embedding"
        raise UserError(
            f"{what} is {noun}, not a base model", hint="Pass a base model (diffusers folder or checkpoint)."
        )
    if detection.family is None:
        if wanted is None:
            raise UserError(
                f"cannot tell whether {what} is SD 1.x or 2.x ({detection.reason})",
                hint="Say which with --model-type (or model.type).",
            )
        return wanted
    found = detection.model_type
    if found not in SD_TYPES:
        name = FAMILY_NAMES.get(detection.family, detection.family)
        raise UserError(
            f"{what} is a {name} model ({detection.reason}); this loader handles SD 1.x and 2.x",
            hint=f"Set the model type to {found.value}." if found else "This model family is not supported.",
        )
    if wanted is not None and found is not wanted:
        raise UserError(
            f"model type {wanted.value} was asked for, but {what} is a {FAMILY_NAMES[found.value]} model "
            f"({detection.reason})",
            hint=f"Set the model type to {found.value} (model.type / --model-type), or omit it to detect it.",
        )
    return found


def _hub_family(repo: str, wanted: ModelType | None) -> ModelType:
    import json

    from huggingface_hub import hf_hub_download

    from onetrainer.util.detect import family_from_unet_config

    with hub_errors(repo, "base model", where="model.base"):
        config = json.loads(Path(hf_hub_download(repo, "unet/config.json")).read_text(encoding="utf-8"))
    family, reason = family_from_unet_config(config)
    return check_family(Detection(MODEL, "diffusers", family, reason, path=Path(repo)), wanted)


def _from_tiny(source: str, wanted: ModelType | None) -> dict[str, Any]:
    from onetrainer.util.tiny.models import build_tiny_pipeline, scheduler_config

    kind = TINY_KINDS[source.removeprefix(TINY_PREFIX)]
    family = ModelType.SD15 if kind == "sd15" else ModelType.SD2
    check_family(Detection(MODEL, "tiny", family.value, "built-in tiny model", path=Path(source)), wanted)
    pipe = build_tiny_pipeline(kind)
    return {
        "model_type": family,
        "unet": pipe.unet,
        "vae": pipe.vae,
        "text_encoder": pipe.text_encoder,
        "tokenizer": pipe.tokenizer,
        "scheduler": scheduler_config(pipe),
        "prediction": pipe.scheduler.config.prediction_type,
    }


def _from_pretrained(location: str, source: str, family: ModelType, dtype: torch.dtype, *, hub: bool) -> dict[str, Any]:
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    with hub_errors(source, "base model", where="model.base", hub=hub):
        unet = UNet2DConditionModel.from_pretrained(location, subfolder="unet", torch_dtype=dtype)
        vae = AutoencoderKL.from_pretrained(location, subfolder="vae", torch_dtype=dtype)
        text_encoder = CLIPTextModel.from_pretrained(location, subfolder="text_encoder", dtype=dtype)
        tokenizer = CLIPTokenizer.from_pretrained(location, subfolder="tokenizer")
        scheduler = DDPMScheduler.load_config(location, subfolder="scheduler")
    mismatch = tokenizer_mismatch(tokenizer, text_encoder.config.vocab_size)
    if mismatch is not None:
        raise UserError(
            f"the tokenizer of {source} {mismatch}",
            hint="It is probably not in the local HF cache while offline; connect once to download it."
            if hub
            else "The tokenizer/ folder is incomplete or does not belong to this text encoder.",
        )
    return {
        "model_type": family,
        "unet": unet,
        "vae": vae,
        "text_encoder": text_encoder,
        "tokenizer": tokenizer,
        "scheduler": dict(scheduler),
        "prediction": scheduler.get("prediction_type", "epsilon"),
    }


def _from_single_file(
    path: Path,
    detection: Detection,
    family: ModelType,
    wanted: PredictionType,
    config: str | Path | None,
    tokenizer: str | Path | None,
    dtype: torch.dtype,
) -> dict[str, Any]:
    # Precedence: the caller, the file's own metadata, an explicit architecture's scheduler, the family.
    prediction = None if wanted is PredictionType.AUTO else wanted.value
    prediction = prediction or detection.prediction_type
    if config is None:
        prediction = prediction or ("v_prediction" if family is ModelType.SD2 else "epsilon")
        architecture = resolve_architecture(None, family, v_prediction=prediction == "v_prediction")
    else:
        architecture = resolve_architecture(str(config), family, v_prediction=False)
        prediction = prediction or architecture.configs["scheduler"].get("prediction_type", "epsilon")
    text_layers = architecture.configs["text_encoder"].get("num_hidden_layers")
    with WeightsFile(path) as weights:
        state_dicts = single_file_state_dicts(weights, family.value, text_encoder_layers=text_layers, dtype=dtype)
    for name in ("unet", "text_encoder", "vae"):
        if not state_dicts[name]:
            raise UserError(
                f"{path.name} has no {name.replace('_', ' ')} weights; it is not a complete checkpoint",
                where=str(path),
                hint="Pass a full checkpoint (UNet, VAE and text encoder)."
                + (" A missing VAE can come from model.vae / --vae." if name == "vae" else ""),
            )
    components = build_components(state_dicts, architecture, path.name)
    loaded_tokenizer = load_tokenizer(None if tokenizer is None else str(tokenizer), architecture, family)
    return {
        "model_type": family,
        **components,
        "tokenizer": loaded_tokenizer,
        "scheduler": architecture.configs["scheduler"],
        "prediction": prediction,
    }


def _assemble(
    parts: dict[str, Any], source: str, prediction: str, device: str, dtype: torch.dtype
) -> StableDiffusionModel:
    import inspect

    from diffusers import DDPMScheduler

    accepted = set(inspect.signature(DDPMScheduler.__init__).parameters)
    scheduler_config = {k: v for k, v in parts["scheduler"].items() if k in accepted}
    noise_scheduler = DDPMScheduler.from_config({**scheduler_config, "prediction_type": prediction})
    return StableDiffusionModel(
        model_type=parts["model_type"],
        unet=_place(parts["unet"], device, dtype),
        vae=_place(parts["vae"], device, dtype),
        text_encoder=_place(parts["text_encoder"], device, dtype),
        tokenizer=parts["tokenizer"],
        noise_scheduler=noise_scheduler,
        prediction_type=prediction,
        source=source,
        scheduler_class=str(parts["scheduler"].get("_class_name", "DDPMScheduler")),
    )


def _place(module: Any, device: str, dtype: torch.dtype) -> Any:
    """Cast only when needed: diffusers warns on every dtype `.to()`, even a no-op one."""
    if module.dtype != dtype:
        module = module.to(dtype=dtype)
    return module.to(device)
