"""Where a single-file checkpoint's architecture and tokenizer come from.

A single file holds weights only. Its component configs come from the configs shipped in the package
(no download), or from an explicit diffusers folder, hub id or tiny model. Its tokenizer comes from an
explicit path or hub id, else from the config source if it has one, else from the local Hugging Face
cache or the hub, in that order; the first one that yields a real vocabulary wins.

transformers 5 returns a 2-token tokenizer without any error when a hub tokenizer is not cached and
the hub is offline, so every candidate is checked against the text encoder it will feed: a tokenizer
fits when it has exactly one token per row of the encoder's embedding table. A fixed minimum size would
refuse valid small vocabularies and say nothing about a tokenizer that belongs to another encoder.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from onetrainer.model.configs import COMPONENT_FILES, config_dir, variant_for
from onetrainer.model_loader.hub import HUB, TINY, TINY_KINDS, hub_errors, hub_offline, source_kind
from onetrainer.util.config.types import TINY_PREFIX
from onetrainer.util.enums import ModelType
from onetrainer.util.errors import UserError
from onetrainer.util.missing import model_unavailable

if TYPE_CHECKING:
    from transformers import CLIPTokenizer

TOKENIZER_REPOS = {
    ModelType.SD15: (
        ("openai/clip-vit-large-patch14", None),
        ("stable-diffusion-v1-5/stable-diffusion-v1-5", "tokenizer"),
        ("runwayml/stable-diffusion-v1-5", "tokenizer"),
    ),
    ModelType.SD2: (
        ("stabilityai/stable-diffusion-2-1", "tokenizer"),
        ("stabilityai/stable-diffusion-2-1-base", "tokenizer"),
        ("stabilityai/stable-diffusion-2", "tokenizer"),
    ),
}
"""Hub tokenizers of each family, tried in the local cache first, then (when online) downloaded."""


@dataclass
class Architecture:
    """Component configs (plain dicts, as in config.json files) and where a matching tokenizer may sit."""

    name: str
    configs: dict[str, dict[str, Any]]
    tokenizer_at: tuple[str, str | None] | None = None
    tiny_kind: str | None = field(default=None, repr=False)


def resolve_architecture(source: str | None, model_type: ModelType, *, v_prediction: bool) -> Architecture:
    """The architecture named by `source` (folder, hub id, tiny:<name>), or the shipped one of the family."""
    if source is None:
        variant = variant_for(model_type, v_prediction=v_prediction)
        return Architecture(f"shipped {variant} config", _read_folder_configs(config_dir(variant)))
    kind = source_kind(source, where="model.config")
    if kind == TINY:
        return _tiny_architecture(source)
    if kind == HUB:
        return Architecture(source, _read_hub_configs(source), (source, "tokenizer"))
    path = Path(source).expanduser()
    if not path.is_dir():
        raise UserError(
            f"an architecture config must be a diffusers folder or hub id, not a file: {path}",
            hint="Pass the folder of a diffusers pipeline with the same architecture (it needs no weights).",
        )
    tokenizer_at = (str(path), "tokenizer") if (path / "tokenizer").is_dir() else None
    return Architecture(str(path), _read_folder_configs(path), tokenizer_at)


def _read_folder_configs(folder: Path) -> dict[str, dict[str, Any]]:
    configs: dict[str, dict[str, Any]] = {}
    for component, relative in COMPONENT_FILES.items():
        path = folder / relative
        if not path.is_file():
            raise UserError(
                f"{folder} has no {relative}, so it cannot serve as an architecture config",
                hint="Use the folder of a diffusers Stable Diffusion pipeline.",
            )
        configs[component] = json.loads(path.read_text(encoding="utf-8"))
    return configs


def _read_hub_configs(repo: str) -> dict[str, dict[str, Any]]:
    from huggingface_hub import hf_hub_download

    configs: dict[str, dict[str, Any]] = {}
    for component, relative in COMPONENT_FILES.items():
        with hub_errors(repo, "architecture config", where="model.config"):
            path = hf_hub_download(repo, relative)
        configs[component] = json.loads(Path(path).read_text(encoding="utf-8"))
    return configs


def _tiny_architecture(source: str) -> Architecture:
    from onetrainer.util.tiny.models import build_tiny_pipeline, scheduler_config

    kind = TINY_KINDS[source.removeprefix(TINY_PREFIX)]
    pipe = build_tiny_pipeline(kind)
    configs = {
        "unet": dict(pipe.unet.config),
        "vae": dict(pipe.vae.config),
        "text_encoder": pipe.text_encoder.config.to_dict(),
        "scheduler": scheduler_config(pipe),
    }
    return Architecture(source, configs, tiny_kind=kind)


def tokenizer_mismatch(tokenizer: CLIPTokenizer, vocab_size: int) -> str | None:
    """Why `tokenizer` cannot feed a text encoder with `vocab_size` embedding rows, or None if it can."""
    count = len(tokenizer)
    if count < vocab_size:
        return f"has {count:,} tokens but the text encoder has {vocab_size:,}: it came back empty or incomplete"
    if count > vocab_size:
        return f"has {count:,} tokens, more than the text encoder's {vocab_size:,}: it belongs to another model"
    return None


def load_tokenizer(explicit: str | None, architecture: Architecture, model_type: ModelType) -> CLIPTokenizer:
    """The first tokenizer that fits the architecture's text encoder, from: `explicit`, the architecture
    source, the HF cache, the hub."""
    vocab_size = int(architecture.configs["text_encoder"]["vocab_size"])
    if explicit is not None:
        return _explicit_tokenizer(explicit, vocab_size)
    if architecture.tiny_kind is not None:
        from onetrainer.util.tiny.tokenizer import build_tiny_clip_tokenizer

        return build_tiny_clip_tokenizer()
    tried: list[str] = []
    candidates = ([architecture.tokenizer_at] if architecture.tokenizer_at else []) + list(
        TOKENIZER_REPOS.get(model_type, ())
    )
    for local_only in (True, False):
        if not local_only and hub_offline():
            break
        for location, subfolder in candidates:
            tokenizer = _try_tokenizer(location, subfolder, vocab_size, local_only=local_only)
            if tokenizer is not None:
                return tokenizer
            tried.append(_describe(location, subfolder) + (" (cache)" if local_only else " (hub)"))
    raise UserError(
        f"no tokenizer is reachable that fits this single-file model's text encoder ({vocab_size:,} tokens)",
        hint="Pass a tokenizer folder or hub id (model.tokenizer / --tokenizer), or a diffusers folder with a "
        f"tokenizer/ subfolder as the config (--config). Tried: {', '.join(tried) or 'nothing'}"
        + (". The hub was not tried: HF_HUB_OFFLINE is set." if hub_offline() else "."),
    )


def _describe(location: str, subfolder: str | None) -> str:
    return f"{location}/{subfolder}" if subfolder else location


def _try_tokenizer(location: str, subfolder: str | None, vocab_size: int, *, local_only: bool) -> CLIPTokenizer | None:
    tokenizer = _read_tokenizer(location, subfolder, local_only=local_only)
    return tokenizer if tokenizer is not None and tokenizer_mismatch(tokenizer, vocab_size) is None else None


def _read_tokenizer(location: str, subfolder: str | None, *, local_only: bool) -> CLIPTokenizer | None:
    from transformers import CLIPTokenizer

    try:
        return CLIPTokenizer.from_pretrained(location, subfolder=subfolder or "", local_files_only=local_only)
    except (OSError, ValueError):
        return None


def _explicit_tokenizer(source: str, vocab_size: int) -> CLIPTokenizer:
    kind = source_kind(source, where="model.tokenizer")
    if kind == TINY:
        from onetrainer.util.tiny.tokenizer import build_tiny_clip_tokenizer

        tiny = build_tiny_clip_tokenizer()
        mismatch = tokenizer_mismatch(tiny, vocab_size)
        if mismatch is not None:
            raise UserError(
                f"the tiny tokenizer {mismatch}",
                where="model.tokenizer",
                hint="Use tiny: tokenizers with tiny: models only.",
            )
        return tiny
    if kind == HUB:
        mismatch = None
        for subfolder in (None, "tokenizer"):
            tokenizer = _read_tokenizer(source, subfolder, local_only=hub_offline())
            if tokenizer is None:
                continue
            mismatch = tokenizer_mismatch(tokenizer, vocab_size)
            if mismatch is None:
                return tokenizer
        if mismatch is not None:
            raise UserError(
                f"the tokenizer {source} {mismatch}",
                where="model.tokenizer",
                hint="Pass the tokenizer of this model.",
            )
        if hub_offline():
            raise model_unavailable(source, where="model.tokenizer", what="tokenizer")
        raise UserError(
            f"{source} has no CLIP tokenizer of {vocab_size:,} tokens (the text encoder's)",
            where="model.tokenizer",
            hint="Pass this model's tokenizer: a local tokenizer folder, or a hub repository with a CLIP tokenizer "
            "(or a tokenizer/ folder).",
        )
    path = Path(source).expanduser()
    folder = path / "tokenizer" if (path / "tokenizer").is_dir() else path
    tokenizer = _try_tokenizer(str(folder), None, vocab_size, local_only=True) if folder.is_dir() else None
    if tokenizer is None:
        raise UserError(
            f"no CLIP tokenizer of {vocab_size:,} tokens (the text encoder's) in {path}",
            hint="Pass a folder holding this model's tokenizer.json or vocab.json + merges.txt (or its pipeline "
            "folder).",
        )
    return tokenizer
