"""Write LoRA-family adapters and textual-inversion embeddings in the layouts other tools load.

LoRAs arrive in the neutral form of `util.keymaps.lora`: component-prefixed peft tensors plus a
kohya-semantics alpha per module.
- `kohya`: `lora_unet_*` / `lora_te_*` with `.lora_down` / `.lora_up` / `.alpha` (LyCORIS names for
  LoHa / LoKr, `.dora_scale` for DoRA), module names as the family names them, what A1111/Forge and
  ComfyUI load.
- `peft`: the diffusers layout (`unet.<module>.lora_A.weight`) that `load_lora_weights` reads, with
  each component's LoraConfig in the `lora_adapter_metadata` header, each module's scale multiplied
  into its up factor (`scale_in_up_factor`: ComfyUI and A1111 read no alpha from this layout). diffusers
  has no loader for kohya LoHa/LoKr, so those save only as kohya.
Alphas are written in fp32 whatever `saving.dtype` says: loaders scale by the value stored (bf16 keeps
about three digits: an alpha of 0.3 would load as 0.30078).
A DoRA is written only in the layout whose loaders compute the weights it was trained with
(`model.adapters.dora`): magnitudes per input column as kohya, per output row as peft.
Embeddings: `a1111` (one key per text encoder, as the family names them; trigger word = file name) or
`diffusers` (`{placeholder: vectors}`, for families with one text encoder that takes embeddings).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from onetrainer.util.config.output import SaveFormat
from onetrainer.util.errors import UserError
from onetrainer.util.keymaps.embeddings import embedding_to_a1111, embedding_to_diffusers
from onetrainer.util.keymaps.engine import KeyMapError
from onetrainer.util.keymaps.lora import architecture_record, peft_to_kohya
from onetrainer.util.keymaps.lora_peft import (
    diffusers_lora_metadata,
    peft_adapter_state,
    to_diffusers_keys,
    with_clip_text_model,
)
from onetrainer.util.safetensors_stream import state_dict_stream, write_safetensors_stream

if TYPE_CHECKING:
    import torch

    from onetrainer.model.diffusion import DiffusionModel
    from onetrainer.util.family import FamilySpec


def lora_from_model(model: DiffusionModel) -> tuple[dict[str, torch.Tensor], dict[str, float], str]:
    """The model's LoRA adapter as (component-prefixed peft tensors, alphas, kind)."""
    adapter = model.adapters.lora
    if adapter is None:
        raise UserError("the model has no LoRA adapter to save")
    tensors: dict[str, torch.Tensor] = {}
    alphas: dict[str, float] = {}
    for component in adapter.state_dicts(model):
        component_tensors, component_alphas = peft_adapter_state(
            model.components[component], component, adapter.adapter_name
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
    spec: FamilySpec,
    kind: str,
    metadata: Mapping[str, str],
    dtype: torch.dtype | None = None,
    configs: Mapping[str, Mapping[str, Any]] | None = None,
) -> Path:
    """`configs`: the component configs of the model the LoRA was trained on, for kohya names that depend
    on its block counts (`LoraNaming.for_model`); None takes the family's released architecture. Where the
    names differ from the released architecture's, the file records the configs (`ARCHITECTURE_KEY`)."""
    record = {} if spec.lora_naming is None else architecture_record(spec.lora_naming, configs)
    try:
        if fmt is SaveFormat.KOHYA:
            _refuse_row_dora(tensors)
            if spec.lora_naming is None:
                raise UserError(f"{spec.title} LoRAs have no kohya layout in this version", hint="Save as peft.")
            naming = spec.lora_naming if configs is None else spec.lora_naming.for_model(configs)
            out = peft_to_kohya(tensors, alphas, naming)
            header = {**metadata, **record}
        elif kind in ("loha", "lokr"):
            raise UserError(
                f"a {kind.upper()} cannot be saved in the peft layout: diffusers has no loader for it",
                hint="Save it as kohya (the LyCORIS layout A1111/Forge and ComfyUI load).",
            )
        else:
            encoders = [component.name for component in spec.text_encoders]
            tensors, alphas = scale_in_up_factor(tensors, alphas)
            # The header's LoraConfig names layers as the installed transformers does: peft matches them as
            # path suffixes, which `text_model.`-prefixed keys of either transformers version end with.
            header = {**metadata, **record, "format": "pt", **diffusers_lora_metadata(tensors, alphas)}
            out = to_diffusers_keys(with_clip_text_model(tensors, encoders), encoders)
    except KeyMapError as error:
        raise UserError(f"cannot write this LoRA as {fmt.value}: {error.message}", hint=error.hint) from None
    write_safetensors_stream(output, state_dict_stream(out, dtype, uncast=".alpha"), header)
    return output


def scale_in_up_factor(
    tensors: Mapping[str, torch.Tensor], alphas: Mapping[str, float]
) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """The LoRA with each module's scale (alpha / rank) multiplied into its up factor (`lora_B`), and alpha =
    rank: the same weights, in the form every loader of the peft layout computes. diffusers reads alphas from
    the header, but ComfyUI and A1111 read only `.alpha` tensors (which diffusers refuses in this layout) and
    take a scale of 1 without them: a LoRA of alpha 8 and rank 4 loaded there at half its strength. A DoRA's
    direction is the same with its scale in `lora_B`, so its magnitudes stay as they are."""
    from onetrainer.util.keymaps.lora import split_peft_key

    ranks = {
        split_peft_key(key)[0]: int(tensor.shape[0])
        for key, tensor in tensors.items()
        if split_peft_key(key)[1] == "lora_A.weight"
    }
    scaled = dict(tensors)
    baked = dict(alphas)
    for key, tensor in tensors.items():
        module, param = split_peft_key(key)
        if param != "lora_B.weight" or module not in ranks:
            continue
        factor = float(alphas.get(module, ranks[module])) / ranks[module]
        if factor != 1.0:
            scaled[key] = tensor * factor
        baked[module] = float(ranks[module])
    return scaled, baked


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
    vectors: Mapping[str, torch.Tensor],
    placeholder: str,
    *,
    fmt: SaveFormat,
    spec: FamilySpec,
    metadata: Mapping[str, str],
    dtype: torch.dtype | None = None,
) -> Path:
    """One embedding's vectors (text encoder -> [n_vectors, width]) as an a1111 or diffusers file."""
    detached = {encoder: tensor.detach().cpu() for encoder, tensor in vectors.items()}
    try:
        if fmt is SaveFormat.A1111:
            data = embedding_to_a1111(detached, spec)
        elif len(detached) == 1:
            data = embedding_to_diffusers(next(iter(detached.values())), placeholder)
        else:
            raise UserError(
                f"a {spec.title} embedding has vectors for {len(detached)} text encoders; the diffusers layout "
                "holds one",
                hint="Save it as a1111, which holds one tensor per text encoder.",
            )
    except KeyMapError as error:
        raise UserError(f"cannot write this embedding as {fmt.value}: {error.message}", hint=error.hint) from None
    write_safetensors_stream(output, state_dict_stream(data, dtype), metadata)
    return output
