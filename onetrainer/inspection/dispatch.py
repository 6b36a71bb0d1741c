"""`inspect_path`: decide what a path is and hand it to the describer for that kind.

Folders are recognised by their marker files (a backup's `meta.json`, a workspace's `config.yaml`
beside `backups/`, a diffusers `model_index.json` or LoRA file) before being read as image folders;
files by their suffix (YAML configs) or else by their bytes (safetensors or a pickle). Anything else
is a `UserError` (exit 2) that says what was recognised, so the user knows why.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from onetrainer.inspection.result import Inspection, human_bytes
from onetrainer.util.errors import UserError

CONFIG_SUFFIXES = (".yaml", ".yml")


def inspect_path(
    path: str | Path, *, resolution: int = 512, model_type: str = "sd15", recursive: bool = False
) -> Inspection:
    """Describe `path`. `resolution`, `model_type` and `recursive` apply to image folders only."""
    target = Path(path).expanduser()
    if not target.exists():
        raise UserError(f"no such file or folder: {target}")
    if target.is_dir():
        return _inspect_folder(target, resolution=resolution, model_type=model_type, recursive=recursive)
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


def _prefixes(entries: dict[str, object]) -> str:
    counts = Counter(key.split(".")[0] for key in entries)
    shown = ", ".join(f"{prefix}.* x{count}" for prefix, count in counts.most_common(4))
    return shown or "no keys"


def _inspect_folder(path: Path, *, resolution: int, model_type: str, recursive: bool) -> Inspection:
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

    if list_images(path, recursive=recursive):
        from onetrainer.inspection.images import inspect_image_folder

        return inspect_image_folder(path, resolution=resolution, model_type=model_type, recursive=recursive)
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
