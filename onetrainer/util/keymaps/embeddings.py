"""Textual-inversion embedding layouts: A1111/ComfyUI files <-> diffusers `load_textual_inversion`.

The neutral form is one [n_vectors, width] tensor per text encoder, keyed by the diffusers component
(`text_encoder`, `text_encoder_2`). The file layouts:
- A1111 safetensors: one tensor per text encoder under the key the family spec gives it
  (`Component.embedding_key`): a single-encoder family's `emb_params`, or one key per encoder such as
  `clip_l` and `clip_g` (sd-scripts' convention, which A1111 and ComfyUI split per encoder). The
  trigger word is the file name. Keys other trainers use for an encoder are read too
  (`Component.embedding_aliases`: OneTrainer stores T5-XXL's vectors under `t5`, not `t5xxl`).
- A1111 legacy `.pt`, once loaded with `weights_only=True`: `string_to_param = {"*": tensor}`.
- diffusers (`learned_embeds.safetensors`): `{placeholder_token: tensor}`; `load_textual_inversion`
  also reads the A1111 layouts when given `token=`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from onetrainer.util.keymaps.engine import KeyMapError

if TYPE_CHECKING:
    import torch

    from onetrainer.util.family import Component, FamilySpec


def a1111_keys(spec: FamilySpec) -> tuple[tuple[str, str], ...]:
    """(A1111 key, text-encoder component) of each text encoder of the family that takes embeddings."""
    layout = tuple((c.embedding_key, c.name) for c in spec.text_encoders if c.embedding_key is not None)
    if not layout:
        raise KeyMapError(f"{spec.title} models take no embeddings")
    return layout


def _optional(spec: FamilySpec) -> set[str]:
    return {component.name for component in spec.text_encoders if component.optional}


def embedding_to_a1111(vectors: Mapping[str, torch.Tensor], spec: FamilySpec) -> dict[str, torch.Tensor]:
    """`{"text_encoder": [n, w]}` -> `{"emb_params": [n, w]}` (or one key per encoder, e.g. `clip_l` + `clip_g`).

    An optional encoder's key is left out when the model went without that encoder (SD 3 without T5: its
    file holds `clip_l` and `clip_g`, and ComfyUI's T5 tokenizer reads the trigger word as text)."""
    layout = a1111_keys(spec)
    optional = _optional(spec)
    missing = [component for _, component in layout if component not in vectors and component not in optional]
    if missing:
        raise KeyMapError(f"{spec.title} embedding needs vectors for {', '.join(missing)}")
    return {key: vectors[component] for key, component in layout if component in vectors}


def a1111_to_embedding(sd: Mapping[str, Any], spec: FamilySpec) -> dict[str, torch.Tensor]:
    """Read any common embedding layout into `{component: [n, w]}`.

    Accepts the A1111 safetensors keys, a legacy `.pt` dict (`string_to_param`), a diffusers
    `{token: tensor}` file, or any other file holding exactly one tensor (what most loaders accept).
    """
    layout = a1111_keys(spec)
    optional = _optional(spec)
    stored = {component: _stored_key(sd, spec.component(component)) for _, component in layout}
    present = {component: key for component, key in stored.items() if key is not None}
    if all(component in present for _, component in layout if component not in optional) and present:
        return {component: _matrix(sd[key]) for component, key in present.items()}
    if "string_to_param" in sd:
        sd = sd["string_to_param"]
    tensors = [value for value in sd.values() if hasattr(value, "shape")]
    if len(layout) == 1 and len(tensors) == 1:
        return {layout[0][1]: _matrix(tensors[0])}
    raise KeyMapError(
        f"not a {spec.title} embedding: keys {sorted(sd)[:8]}",
        hint=f"expected {' + '.join(key for key, _ in layout)}",
    )


def _stored_key(sd: Mapping[str, Any], component: Component) -> str | None:
    """The key a file holds `component`'s vectors under: ours, or one another trainer writes."""
    return next((key for key in (component.embedding_key, *component.embedding_aliases) if key in sd), None)


def embedding_to_diffusers(vectors: torch.Tensor, token: str) -> dict[str, torch.Tensor]:
    """One encoder's vectors in the `learned_embeds` layout diffusers writes: `{token: [n, w]}`."""
    return {token: _matrix(vectors)}


def _matrix(tensor: torch.Tensor) -> torch.Tensor:
    """Embeddings are [n_vectors, width]; a single vector saved as [width] becomes [1, width]."""
    return tensor[None] if tensor.ndim == 1 else tensor
