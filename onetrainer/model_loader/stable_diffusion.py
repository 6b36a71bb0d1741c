"""The SD 1.x / 2.x loader: the shared diffusers loader, plus the reader of their original single files.

A single file holds the UNet, VAE and CLIP (1.x) or OpenCLIP (2.x) text encoder in the original
layout, and weights only: the architecture comes from the configs shipped in the package (or the
user's `model.config`) and the tokenizer is looked for (`tokenizers.load_tokenizer`). An unmarked 2.x
file is taken as the 768 px v-prediction model unless the user says otherwise.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from onetrainer.model_loader.architecture import resolve_architecture
from onetrainer.model_loader.checkpoint import WeightsFile
from onetrainer.model_loader.pipeline import DiffusersLoader, LoadedParts
from onetrainer.model_loader.single_file import build_components, single_file_state_dicts
from onetrainer.model_loader.tokenizers import load_tokenizer
from onetrainer.util.detect import Detection
from onetrainer.util.enums import PredictionType
from onetrainer.util.errors import UserError
from onetrainer.util.family import FamilySpec
from onetrainer.util.registry import ModuleKind, register

if TYPE_CHECKING:
    import torch


def read_single_file(
    path: Path,
    detection: Detection,
    spec: FamilySpec,
    *,
    prediction_type: PredictionType,
    config: str | Path | None,
    tokenizer: str | Path | None,
    dtype: torch.dtype,
) -> LoadedParts:
    # Precedence: the caller, the file's own metadata, an explicit architecture's scheduler, the family.
    prediction = None if prediction_type is PredictionType.AUTO else prediction_type.value
    prediction = prediction or detection.prediction_type
    architecture = resolve_architecture(None if config is None else str(config), spec, prediction)
    prediction = prediction or architecture.configs["scheduler"].get("prediction_type", "epsilon")
    text_layers = architecture.configs["text_encoder"].get("num_hidden_layers")
    with WeightsFile(path) as weights:
        state_dicts = single_file_state_dicts(weights, spec, text_encoder_layers=text_layers, dtype=dtype)
    for component in spec.components:
        if not state_dicts[component.name]:
            raise UserError(
                f"{path.name} has no {component.title} weights; it is not a complete checkpoint",
                where=str(path),
                hint="Pass a full checkpoint (UNet, VAE and text encoder)."
                + (" A missing VAE can come from model.vae / --vae." if component.name == "vae" else ""),
            )
    components = build_components(state_dicts, architecture, spec, path.name)
    loaded_tokenizer = load_tokenizer(None if tokenizer is None else str(tokenizer), architecture, spec)
    return LoadedParts(
        components=components,
        tokenizers={"tokenizer": loaded_tokenizer},
        scheduler=architecture.configs["scheduler"],
        prediction_type=prediction,
        pipeline_config=architecture.settings,
    )


@register(ModuleKind.LOADER, "sd15", "sd2")
def stable_diffusion_loader() -> DiffusersLoader:
    return DiffusersLoader(read_single_file=read_single_file)
