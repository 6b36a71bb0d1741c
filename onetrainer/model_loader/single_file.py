"""Build SD 1.x/2.x diffusers components from an original single-file checkpoint, key by key.

Keys are renamed with `util.keymaps` tables (no diffusers single-file internals, so nothing is
downloaded), and each tensor is cast and placed as it is read. Components are constructed with empty
(meta) parameters and receive the checkpoint's tensors by assignment, so no random initialisation runs
and the weights exist once in memory.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from onetrainer.model_loader.architecture import Architecture
from onetrainer.model_loader.checkpoint import WeightsFile
from onetrainer.util.errors import UserError
from onetrainer.util.keymaps.engine import StreamConverter
from onetrainer.util.keymaps.sd_tables import SdLayout
from onetrainer.util.keymaps.single_file import COMPONENTS, read_ignore, table_for_single_file_keys

if TYPE_CHECKING:
    import torch

COMPONENT_NAMES = {
    "unet": "UNet (model.diffusion_model.*)",
    "vae": "VAE (first_stage_model.*)",
    "text_encoder": "text encoder (cond_stage_model.*)",
}


def single_file_state_dicts(
    weights: WeightsFile,
    family: str,
    *,
    text_encoder_layers: int | None,
    dtype: torch.dtype | None = None,
    components: tuple[str, ...] = COMPONENTS,
    meta: bool = False,
) -> dict[str, dict[str, torch.Tensor]]:
    """Diffusers state dicts of the wanted components; a component the file lacks comes back empty."""
    parts: dict[str, dict[str, torch.Tensor]] = {name: {} for name in components}
    for key, tensor in stream_single_file(
        weights, family, text_encoder_layers=text_encoder_layers, dtype=dtype, components=components, meta=meta
    ):
        component, _, rest = key.partition(".")
        parts[component][rest] = tensor
    return parts


def stream_single_file(
    weights: WeightsFile,
    family: str,
    *,
    text_encoder_layers: int | None,
    dtype: torch.dtype | None = None,
    components: tuple[str, ...] = COMPONENTS,
    meta: bool = False,
) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield `(component.key, tensor)` in diffusers naming, reading one source tensor at a time.

    With `meta`, tensors are data-less stand-ins (for planning output headers without reading data).
    """
    keys = weights.keys()
    table = table_for_single_file_keys(keys, family)
    converter = StreamConverter(
        table, reverse=True, ignore=read_ignore(SdLayout.from_single_file_keys(keys), text_encoder_layers)
    )
    for key in keys:
        target = table.map_key(key, reverse=True)
        if target is not None and target.partition(".")[0] not in components:
            continue
        tensor = weights.meta_tensor(key) if meta else weights.tensor(key)
        if dtype is not None and tensor.is_floating_point():
            tensor = tensor.to(dtype)
        yield from converter.feed(key, tensor)
    converter.finish()


@contextlib.contextmanager
def empty_weights() -> Iterator[None]:
    """Construct modules with parameters on the meta device (buffers stay real), as diffusers does."""
    from accelerate import init_empty_weights

    with init_empty_weights(include_buffers=False):
        yield


def build_components(
    state_dicts: dict[str, dict[str, torch.Tensor]],
    architecture: Architecture,
    source: str,
    *,
    check_only: bool = False,
) -> dict[str, Any]:
    """UNet, VAE and text encoder from their configs, holding the given tensors (assigned, not copied).

    With `check_only` the tensors may be meta stand-ins: names and shapes are checked against the
    architecture and nothing is assigned (how a conversion validates `--config` before writing).
    """
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    unet_config = dict(architecture.configs["unet"])
    conv_in = state_dicts.get("unet", {}).get("conv_in.weight")
    if conv_in is not None:
        unet_config["in_channels"] = int(conv_in.shape[1])  # inpainting models take 9 channels
    builders = {
        "unet": lambda: UNet2DConditionModel.from_config(unet_config),
        "vae": lambda: AutoencoderKL.from_config(architecture.configs["vae"]),
        "text_encoder": lambda: CLIPTextModel(CLIPTextConfig.from_dict(architecture.configs["text_encoder"])),
    }
    built: dict[str, Any] = {}
    for name, state_dict in state_dicts.items():
        if not state_dict:
            continue
        with empty_weights():
            module = builders[name]()
        assign_state_dict(
            module,
            state_dict,
            what=f"the {COMPONENT_NAMES[name]} of {source} does not match the {architecture.name}",
            hint="Pass the architecture it was made with as a diffusers folder or hub id (model.config / --config).",
            check_only=check_only,
        )
        built[name] = module.eval()
    return built


def assign_state_dict(
    module: Any, state_dict: dict[str, torch.Tensor], *, what: str, hint: str, check_only: bool = False
) -> None:
    """Load `state_dict` into a module built with empty weights; any key or shape mismatch is a user error."""
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    wrong = sorted(k for k in set(expected) & set(state_dict) if tuple(expected[k].shape) != tuple(state_dict[k].shape))
    problems = [
        f"{label}: {', '.join(keys[:3])}{' ...' if len(keys) > 3 else ''} ({len(keys)})"
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong))
        if keys
    ]
    if problems:
        raise UserError(f"{what}: " + "; ".join(problems), hint=hint)
    if not check_only:
        module.load_state_dict(state_dict, strict=True, assign=True)
