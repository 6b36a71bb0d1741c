"""Write LoRA-family adapters and textual-inversion embeddings in the layouts other tools load.

LoRAs arrive in the neutral form of `util.keymaps.lora`: component-prefixed peft tensors plus a
kohya-semantics alpha per module.
- `kohya`: `lora_unet_*` / `lora_te_*` with `.lora_down` / `.lora_up` / `.alpha` (LyCORIS names for
  LoHa / LoKr, `.dora_scale` for DoRA), what A1111/Forge and ComfyUI load.
- `peft`: the diffusers layout (`unet.<module>.lora_A.weight`) that `load_lora_weights` reads, with
  each component's LoraConfig in the `lora_adapter_metadata` header so alphas survive. diffusers has
  no loader for SD LoHa/LoKr, so those save only as kohya.
A DoRA is written only in the layout whose loaders compute the weights it was trained with
(`model.adapters.dora`): magnitudes per input column as kohya, per output row as peft.
Embeddings: `a1111` (`emb_params`, trigger word = file name) or `diffusers` (`{placeholder: vectors}`).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from onetrainer.util.config.output import SaveFormat
from onetrainer.util.errors import UserError
from onetrainer.util.keymaps.embeddings import embedding_to_a1111, embedding_to_diffusers
from onetrainer.util.keymaps.engine import KeyMapError
from onetrainer.util.keymaps.lora import peft_to_kohya
from onetrainer.util.keymaps.lora_peft import diffusers_lora_metadata, peft_adapter_state, to_diffusers_keys
from onetrainer.util.safetensors_stream import state_dict_stream, write_safetensors_stream

if TYPE_CHECKING:
    import torch

    from onetrainer.model.stable_diffusion import StableDiffusionModel

KOHYA_NAMING = "sd15"
"""SD 1.x and 2.x LoRAs share one kohya naming; this family selects it when the family is undetermined."""


def lora_from_model(model: StableDiffusionModel) -> tuple[dict[str, torch.Tensor], dict[str, float], str]:
    """The model's LoRA adapter as (component-prefixed peft tensors, alphas, kind)."""
    adapter = model.adapters.get("lora")
    if adapter is None:
        raise UserError("the model has no LoRA adapter to save")
    tensors: dict[str, torch.Tensor] = {}
    alphas: dict[str, float] = {}
    for component in adapter.state_dicts(model):
        component_tensors, component_alphas = peft_adapter_state(
            getattr(model, component), component, adapter.adapter_name
        )
        tensors.update(component_tensors)
        alphas.update(component_alphas)
    return tensors, alphas, adapter.kind


def write_lora(
    output: Path,
    tensors: Mapping[str, torch.Tensor],
    alphas: Mapping[str, float],
    *,
    fmt: SaveFormat,
    family: str | None,
    kind: str,
    metadata: Mapping[str, str],
    dtype: torch.dtype | None = None,
) -> Path:
    try:
        if fmt is SaveFormat.KOHYA:
            _refuse_row_dora(tensors)
            out = peft_to_kohya(tensors, alphas, family if family in ("sd15", "sd2", "sdxl") else KOHYA_NAMING)
            header = dict(metadata)
        elif kind in ("loha", "lokr"):
            raise UserError(
                f"a {kind.upper()} cannot be saved in the peft layout: diffusers has no loader for it",
                hint="Save it as kohya (the LyCORIS layout A1111/Forge and ComfyUI load).",
            )
        else:
            header = {**metadata, "format": "pt", **diffusers_lora_metadata(tensors, alphas)}
            out = to_diffusers_keys(tensors)
    except KeyMapError as error:
        raise UserError(f"cannot write this LoRA as {fmt.value}: {error.message}", hint=error.hint) from None
    write_safetensors_stream(output, state_dict_stream(out, dtype), header)
    return output


def _refuse_row_dora(tensors: Mapping[str, torch.Tensor]) -> None:
    """A kohya DoRA with magnitudes per output row loads without error and computes other weights in
    A1111 (which normalises per column) and in ComfyUI/Forge (which divide by the base weight's norms)."""
    if any(key.endswith(".lora_magnitude_vector") for key in tensors):
        raise UserError(
            "this DoRA keeps a magnitude per output row (peft's layout); as a kohya file, A1111, Forge and "
            "ComfyUI would load it without error and compute other weights than it was trained with",
            hint="Keep it in the peft layout for diffusers, or train it with saving.format: kohya, which "
            "learns the magnitudes per input column as those tools compute them.",
        )


def write_embedding(
    output: Path,
    vectors: torch.Tensor,
    placeholder: str,
    *,
    fmt: SaveFormat,
    family: str | None,
    metadata: Mapping[str, str],
    dtype: torch.dtype | None = None,
) -> Path:
    """One embedding's [n_vectors, width] vectors, detached, as an a1111 or diffusers file."""
    vectors = vectors.detach().cpu()
    if fmt is SaveFormat.A1111:
        data = embedding_to_a1111({"text_encoder": vectors}, family if family in ("sd15", "sd2") else KOHYA_NAMING)
    else:
        data = embedding_to_diffusers(vectors, placeholder)
    write_safetensors_stream(output, state_dict_stream(data, dtype), metadata)
    return output
