"""Load a component quantised while it is read: built empty, filled tensor by tensor from its safetensors.

`from_pretrained` materialises a component (a whole weights shard at a time) in the load dtype before
anything could quantise it, so a 12 B model would need its full size in RAM first. Here the
component is built on the meta device from its config (`accelerate.init_empty_weights`, buffers stay
real), and each tensor is read from the file on its own (seek and read into a fresh buffer, no memory
map that would keep the pages resident) and put in place: a linear layer's weight is quantised at once
(`model.quantised.quantise_linear`), every other floating-point tensor takes the compute dtype. Peak
memory is the quantised component plus one tensor.

It reads diffusers and transformers weights whose keys are the module's own state-dict keys (every
diffusers folder diffusers writes today). Anything else (no safetensors, legacy key names, missing
tensors) returns None, and the caller loads the component the ordinary way and quantises it layer by
layer afterwards, which needs the component's size in the load dtype once.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from onetrainer.model.quantised import QuantisedStorage, mark_quantised, quantise_linear
from onetrainer.model_loader.checkpoint import read_header, read_tensor
from onetrainer.util.dtypes import layer_dtype

if TYPE_CHECKING:
    import torch

WEIGHT_NAMES = {
    "diffusers": ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.safetensors.index.json"),
    "transformers": ("model.safetensors", "model.safetensors.index.json"),
}
"""(single file, sharded index) of a component's weights, per library."""


class _CannotStream(Exception):
    """The weights are not laid out as this reader expects; load the ordinary way."""


def load_quantised(
    cls: type, location: str, subfolder: str, storage: QuantisedStorage, *, hub: bool
) -> torch.nn.Module | None:
    """The component of `location/subfolder`, its linear layers stored as `storage`; None if it cannot be streamed."""
    library = "diffusers" if cls.__module__.startswith("diffusers") else "transformers"
    files = _weight_files(location, subfolder, WEIGHT_NAMES[library], hub=hub)
    if files is None:
        return None
    module = _empty(cls, location, subfolder, library)
    try:
        for file in files:
            _fill(module, file, storage)
        _check_complete(module)
    except _CannotStream:
        return None
    mark_quantised(module, storage.format)
    module.eval()
    return module


def _weight_files(location: str, subfolder: str, names: tuple[str, str], *, hub: bool) -> list[Path] | None:
    single, index = names
    if hub:
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

        def fetch(name: str) -> Path | None:
            try:
                return Path(hf_hub_download(location, f"{subfolder}/{name}"))
            except (EntryNotFoundError, LocalEntryNotFoundError):
                return None
    else:

        def fetch(name: str) -> Path | None:
            path = Path(location) / subfolder / name
            return path if path.is_file() else None

    found = fetch(single)
    if found is not None:
        return [found]
    listing = fetch(index)
    if listing is None:
        return None
    shards = sorted(set(json.loads(listing.read_text(encoding="utf-8"))["weight_map"].values()))
    paths = [fetch(shard) for shard in shards]
    return None if any(path is None for path in paths) else [path for path in paths if path is not None]


def _empty(cls: Any, location: str, subfolder: str, library: str) -> torch.nn.Module:
    """The component built from its config with its parameters on the meta device."""
    from accelerate import init_empty_weights

    if library == "diffusers":
        config = cls.load_config(location, subfolder=subfolder)
        with init_empty_weights():
            module: torch.nn.Module = cls.from_config(config)
        return module
    config = cls.config_class.from_pretrained(location, subfolder=subfolder)
    with init_empty_weights():
        module = cls._from_config(config)
    return module


def _fill(module: torch.nn.Module, path: Path, storage: QuantisedStorage) -> None:
    with path.open("rb") as handle:
        header, start = read_header(handle)
        for key, entry in sorted(header.items(), key=lambda item: item[1]["data_offsets"][0]):
            if not place(module, key, read_tensor(handle, start, entry), storage):
                raise _CannotStream(key)


def place(module: torch.nn.Module, key: str, tensor: torch.Tensor, storage: QuantisedStorage) -> bool:
    """Put one tensor of `module`'s state dict in place, a linear layer's weight quantised as it arrives.

    False where the module has no such tensor. A buffer the module no longer saves (CLIP's position
    ids, which older files keep) is skipped: the module builds its own.
    """
    owner_path, _, name = key.rpartition(".")
    try:
        owner = module.get_submodule(owner_path) if owner_path else module
    except AttributeError:
        return False
    if name not in owner._parameters and name not in owner._buffers:
        return _non_persistent(owner, name)
    _put(module, owner_path, owner, name, tensor, storage)
    _release_freed_memory()
    return True


def _release_freed_memory() -> None:
    """Hand the memory of the tensors just freed back to the OS.

    glibc serves allocations of a size it has freed before from its heap instead of fresh mappings, and
    keeps the freed pages: without this, reading a model tensor by tensor would grow the resident set
    by every intermediate it ever held. Elsewhere than glibc this does nothing.
    """
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


@functools.cache
def _malloc_trim() -> Any:
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    try:
        return getattr(ctypes.CDLL(name), "malloc_trim", None) if name else None
    except OSError:
        return None


def _non_persistent(owner: torch.nn.Module, name: str) -> bool:
    """Older files keep buffers that are no longer saved (CLIP's position ids): the module builds its own."""
    return name in getattr(owner, "_non_persistent_buffers_set", set())


def _put(
    root: torch.nn.Module, path: str, owner: torch.nn.Module, name: str, tensor: torch.Tensor, storage: QuantisedStorage
) -> None:
    import torch

    compute = layer_dtype(root, path, storage.compute_dtype)
    if tensor.is_floating_point():
        tensor = tensor.to(compute)
    if name in owner._buffers:
        owner._buffers[name] = tensor
        return
    owner._parameters[name] = torch.nn.Parameter(tensor, requires_grad=False)
    if type(owner) is torch.nn.Linear and name == "weight":
        quantised = quantise_linear(owner, storage.format, compute, quantise_on=storage.quantise_on)
        if quantised is not owner:
            parent_path, _, child = path.rpartition(".")
            setattr(root.get_submodule(parent_path) if parent_path else root, child, quantised)


def _check_complete(module: torch.nn.Module) -> None:
    if unfilled(module):
        raise _CannotStream("missing tensors")


def unfilled(module: torch.nn.Module) -> list[str]:
    """The parameters no tensor was placed in (tied ones are tied again first); none in a complete module."""
    tie = getattr(module, "tie_weights", None)
    if callable(tie):
        tie()
    return [name for name, param in module.named_parameters() if param.device.type == "meta"]
