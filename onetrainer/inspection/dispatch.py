"""`inspect_path`: decide what a path is and hand it to the describer for that kind.

Folders are recognised by their marker files (a backup's `meta.json`, a workspace's `config.yaml`
beside `backups/`, a diffusers `model_index.json` or LoRA file) before being read as image folders;
files by their suffix (YAML configs) or else by their bytes (safetensors or a pickle). Anything else
is a `UserError` (exit 2) that says what was recognised, so the user knows why.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from onetrainer.inspection.result import Inspection, human_bytes
from onetrainer.util.errors import UserError
from onetrainer.util.missing import missing_path

CONFIG_SUFFIXES = (".yaml", ".yml")


def inspect_path(
    path: str | Path,
    *,
    resolution: int | None = None,
    model_type: str | None = None,
    recursive: bool = False,
    batch_size: int | None = None,
    config: str | Path | None = None,
) -> Inspection:
    """Describe `path`. The other arguments apply to image folders only: a run `config` to read the
    folder with (as its only concept), and options that win over it (defaults: 512 px, the default
    model type, batch 1).
    """
    target = Path(path).expanduser()
    if not target.exists():
        raise missing_path(target, what="file or folder", where=None)
    if target.is_dir():
        return _inspect_folder(
            target,
            FolderOptions(resolution, model_type, recursive, batch_size, Path(config) if config is not None else None),
        )
    if target.suffix.lower() in CONFIG_SUFFIXES:
        from onetrainer.inspection.config_file import inspect_config

        return inspect_config(target)
    return inspect_weights(target)


def inspect_weights(path: Path) -> Inspection:
    from onetrainer.inspection.embedding import inspect_embedding
    from onetrainer.inspection.lora import inspect_lora
    from onetrainer.inspection.models import inspect_single_file
    from onetrainer.inspection.tensors import read_index
    from onetrainer.util.detect import EMBEDDING, LORA, detect_weights
    from onetrainer.util.safetensors_meta import HeaderError

    try:
        index = read_index(path)
    except UserError as error:
        own_hint = isinstance(error, HeaderError) and error.hint  # a safetensors file cut short says so
        raise UserError(
            error.message,
            where=str(path),
            hint=own_hint
            or f"Recognised: a {human_bytes(path.stat().st_size)} file with suffix '{path.suffix}'. "
            "inspect reads model/LoRA/embedding weights (.safetensors, .ckpt, .pt), run configs (.yaml), "
            "backups, workspaces, diffusers folders and image folders.",
        ) from None
    try:
        detection = detect_weights(index.shapes, index.metadata, name=path.name)
    except UserError as error:
        raise UserError(
            error.message,
            where=str(path),
            hint=f"Recognised: a {index.container} file with {len(index.entries)} tensors "
            f"({_prefixes(index.entries)}) and {len(index.metadata)} metadata keys. {error.hint or ''}".strip(),
        ) from None
    if detection.kind == LORA:
        return inspect_lora(path, index, detection)
    if detection.kind == EMBEDDING:
        return inspect_embedding(path, index, detection)
    return inspect_single_file(path, index, detection)


def _prefixes(entries: Iterable[str]) -> str:
    counts = Counter(key.split(".")[0] for key in entries)
    shown = ", ".join(f"{prefix}.* x{count}" for prefix, count in counts.most_common(4))
    return shown or "no keys"


@dataclass(frozen=True)
class FolderOptions:
    """How to read an image folder: see `inspect_path`."""

    resolution: int | None = None
    model_type: str | None = None
    recursive: bool = False
    batch_size: int | None = None
    config: Path | None = None


def _inspect_folder(path: Path, options: FolderOptions) -> Inspection:
    from onetrainer.inspection.run_folders import backup_meta, inspect_backup, inspect_workspace, is_workspace
    from onetrainer.util.detect import LORA_FOLDER_FILES, detect_folder

    meta = backup_meta(path)
    if meta is not None:
        return inspect_backup(path, meta)
    if is_workspace(path):
        return inspect_workspace(path)
    if (path / "model_index.json").is_file():
        from onetrainer.inspection.models import inspect_diffusers_folder

        return inspect_diffusers_folder(path, detect_folder(path))
    for name in LORA_FOLDER_FILES:
        if (path / name).is_file():
            return inspect_weights(path / name)
    from onetrainer.data_loader.files import list_images

    recursive = options.recursive
    if list_images(path, recursive=recursive):
        from onetrainer.inspection.images import folder_config, inspect_image_folder
        from onetrainer.util.config.loader import load_config

        run = load_config(options.config) if options.config is not None else None
        config = folder_config(
            path,
            config=run,
            resolution=options.resolution,
            batch_size=options.batch_size,
            model_type=options.model_type,
            recursive=recursive,
        )
        return inspect_image_folder(path, config)
    files = [child for child in path.iterdir() if not child.name.startswith(".")]
    suffixes = Counter(child.suffix or "(none)" for child in files if child.is_file())
    listing = ", ".join(f"{count} {suffix}" for suffix, count in suffixes.most_common(5)) or "no files"
    folders = sum(child.is_dir() for child in files)
    raise UserError(
        f"{path} is a folder onetrainer does not recognise",
        hint=f"Recognised: {listing}, {folders} sub-folder(s), no images"
        + ("" if recursive else " at the top level (try --recursive)")
        + ". inspect reads diffusers folders, LoRA folders, backups, workspaces and image folders.",
    )
