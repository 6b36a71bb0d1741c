"""kohya module names: a component prefix plus the module path with every "." written "_".

`DottedKohyaNaming` is the naming of families whose kohya files use the diffusers / transformers
module paths themselves (`lora_unet_down_blocks_0_attentions_0_proj_in`, `lora_te_text_model_encoder_
layers_0_mlp_fc1`): reading such a name back needs the identifiers that themselves contain "_", so
each naming carries its table of them. Text encoders keep `text_model_` in kohya names even where the
installed transformers' CLIP class has flattened it away.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from onetrainer.util.keymaps.engine import KeyMapError

if TYPE_CHECKING:
    import torch

    from onetrainer.util.keymaps.fused_lora import FusedAdapter

CLIP_TEXT_MODEL_CHILDREN = ("encoder.", "embeddings.", "final_layer_norm.")

UNET_CLIP_COMPOUND_NAMES = frozenset(
    {
        "down_blocks", "up_blocks", "mid_block", "transformer_blocks", "to_q", "to_k", "to_v", "to_out",
        "proj_in", "proj_out", "time_emb_proj", "conv_shortcut", "conv_in", "conv_out", "conv_norm_out",
        "time_embedding", "linear_1", "linear_2", "add_embedding", "text_model", "self_attn", "q_proj",
        "k_proj", "v_proj", "out_proj", "layer_norm1", "layer_norm2", "final_layer_norm", "token_embedding",
        "position_embedding", "text_projection",
    }
)  # fmt: skip
"""Identifiers with "_" in diffusers' UNet2DConditionModel and transformers' CLIP text models."""
T5_COMPOUND_NAMES = frozenset({"wi_0", "wi_1", "layer_norm", "final_layer_norm", "relative_attention_bias"})
"""Identifiers with "_" in transformers' T5 encoder."""


@dataclass(frozen=True)
class DottedKohyaNaming:
    prefixes: tuple[tuple[str, str], ...]
    """(kohya prefix, diffusers component), e.g. ("lora_unet_", "unet")."""
    compound_names: frozenset[str]
    text_encoders: frozenset[str] = frozenset()
    """Components that are CLIP text models (their kohya names keep `text_model_`)."""
    projected: frozenset[str] = frozenset()
    """Text encoders that are CLIPTextModelWithProjection (whose keys keep `text_model.` in every version)."""
    implementation: str = "diffusers"
    """`modelspec.implementation` of LoRAs named this way."""

    @classmethod
    def of(
        cls,
        prefixes: Iterable[tuple[str, str]],
        compound_names: frozenset[str],
        *,
        text_encoders: Iterable[str] = (),
        projected: Iterable[str] = (),
    ) -> DottedKohyaNaming:
        return cls(tuple(prefixes), compound_names, frozenset(text_encoders), frozenset(projected))

    def for_model(self, configs: Mapping[str, Mapping[str, Any]]) -> DottedKohyaNaming:
        """Diffusers module paths are the same whatever the block counts."""
        return self

    def join(
        self, tensors: Mapping[str, torch.Tensor], alphas: Mapping[str, float]
    ) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
        """Every diffusers module has its own kohya name: nothing to merge."""
        return dict(tensors), dict(alphas)

    def split(
        self, tensors: Mapping[str, torch.Tensor], alphas: Mapping[str, float]
    ) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
        return dict(tensors), dict(alphas)

    def whole_fused(
        self, tensors: Mapping[str, torch.Tensor], alphas: Mapping[str, float]
    ) -> tuple[dict[str, torch.Tensor], dict[str, float], list[FusedAdapter]]:
        """No fused layers: nothing is taken out."""
        return dict(tensors), dict(alphas), []

    def to_kohya(self, module: str) -> str:
        """`unet.down_blocks.0.resnets.0.conv1` -> `lora_unet_down_blocks_0_resnets_0_conv1`."""
        component, _, path = module.partition(".")
        prefix = next((p for p, c in self.prefixes if c == component), None)
        if prefix is None:
            raise KeyMapError(f"{module}: component {component!r} has no kohya prefix")
        if component in self.text_encoders and path.startswith(CLIP_TEXT_MODEL_CHILDREN):
            path = "text_model." + path  # transformers >= 5.6 dropped it from CLIPTextModel; kohya keeps it
        return prefix + path.replace(".", "_")

    def from_kohya(self, name: str, *, hf_text_model: bool | None = None) -> str:
        """`lora_te_text_model_encoder_layers_0_mlp_fc1` -> `text_encoder.encoder.layers.0.mlp.fc1`.

        `hf_text_model=None` keeps `text_model.` only if the installed transformers' CLIP class does.
        """
        matches = [(p, c) for p, c in self.prefixes if name.startswith(p)]
        if not matches:
            raise KeyMapError(f"{name}: not a kohya module name of this model family")
        prefix, component = max(matches, key=lambda pc: len(pc[0]))
        tokens = name[len(prefix) :].split("_")
        longest = max(compound.count("_") + 1 for compound in self.compound_names)
        parts: list[str] = []
        while tokens:
            for size in range(min(longest, len(tokens)), 0, -1):
                candidate = "_".join(tokens[:size])
                if size == 1 or candidate in self.compound_names:
                    parts.append(candidate)
                    del tokens[:size]
                    break
        path = ".".join(parts)
        if component in self.text_encoders and path.startswith("text_model."):
            if hf_text_model is None:
                from onetrainer.util.keymaps.clip import clip_text_model_is_wrapped

                hf_text_model = clip_text_model_is_wrapped(with_projection=component in self.projected)
            if not hf_text_model:
                path = path.removeprefix("text_model.")
        return f"{component}.{path}"
