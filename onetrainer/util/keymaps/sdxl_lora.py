"""kohya LoRA names of SDXL: the UNet under its original (SGM) module names, as sd-scripts writes them.

sd-scripts trains SDXL on its own copy of Stability's UNet, so an SDXL LoRA names its layers
`lora_unet_` + the SGM module path with every "." written "_":
`lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q`, `lora_unet_input_blocks_1_0_in_layers_2`,
`lora_unet_output_blocks_2_2_conv`, `lora_unet_middle_block_1_proj_in`, `lora_unet_label_emb_0_0`.
That is what A1111/Forge match against their own modules and what ComfyUI maps to its (SGM) state
dict. Files written by diffusers' `convert_state_dict_to_kohya` name the UNet by its diffusers paths under
the same prefix (`lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q`), and SimpleTuner's
LyCORIS files under `lycoris_`; the two name sets share no module, so those are read too (never written).
The text encoders keep transformers' CLIP paths: `lora_te1_text_model_encoder_layers_0_mlp_fc1`
(CLIP ViT-L), `lora_te2_...` (OpenCLIP bigG).

diffusers module paths and SGM module paths are paired by the same `ldm_tables.unet_rows` that convert
single files, so the two can never disagree. Which SGM index a diffusers block gets depends on the
UNet's layers per block and which up blocks hold attention: the naming of a model is made from its
UNet config (`for_model`); without one it is the released SDXL UNet's.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any

from onetrainer.util.keymaps.engine import KeyMapError, KeyTable
from onetrainer.util.keymaps.kohya_names import UNET_CLIP_COMPOUND_NAMES, DottedKohyaNaming
from onetrainer.util.keymaps.ldm_tables import SdLayout, unet_rows
from onetrainer.util.safetensors_meta import IMPL_STABILITY_AI

if TYPE_CHECKING:
    import torch

    from onetrainer.util.keymaps.fused_lora import FusedAdapter

SGM_COMPOUND_NAMES = frozenset(
    {
        "input_blocks", "middle_block", "output_blocks", "in_layers", "out_layers", "emb_layers",
        "skip_connection", "time_embed", "label_emb",
    }
)  # fmt: skip
"""Identifiers with "_" in the SGM UNet (besides the transformer names it shares with diffusers)."""

PREFIXES = (
    ("lora_unet_", "unet"),
    ("lora_te1_", "text_encoder"),
    ("lora_te2_", "text_encoder_2"),
    ("lycoris_", "unet"),
)


def unet_layout(config: Mapping[str, Any]) -> SdLayout:
    """The UNet counts the SGM indices depend on, from a diffusers `UNet2DConditionModel` config."""
    layers = config["layers_per_block"]
    up_blocks = list(config["up_block_types"])
    return SdLayout(
        unet_blocks=len(config["down_block_types"]),
        unet_layers=int(layers if isinstance(layers, int) else layers[0]),
        unet_up_attention=frozenset(i for i, kind in enumerate(up_blocks) if kind.startswith("CrossAttn")),
        vae_blocks=0,
        vae_layers=0,
        te_layers=0,
    )


RELEASED_UNET = SdLayout(
    unet_blocks=3, unet_layers=2, unet_up_attention=frozenset({0, 1}), vae_blocks=0, vae_layers=0, te_layers=0
)
"""stable-diffusion-xl-base-1.0's UNet: three levels of two layers, attention in the two deeper levels."""


@dataclass(frozen=True)
class SgmKohyaNaming:
    """A `LoraNaming`: SGM module names for the UNet, transformers' CLIP paths for the text encoders."""

    layout: SdLayout = RELEASED_UNET
    implementation: str = IMPL_STABILITY_AI
    dotted: DottedKohyaNaming = field(
        default_factory=lambda: DottedKohyaNaming.of(
            PREFIXES,
            UNET_CLIP_COMPOUND_NAMES | SGM_COMPOUND_NAMES,
            text_encoders=("text_encoder", "text_encoder_2"),
            projected=("text_encoder_2",),
        )
    )

    @cached_property
    def _table(self) -> KeyTable:
        return KeyTable(unet_rows(self.layout, src="", dst=""))

    def for_model(self, configs: Mapping[str, Mapping[str, Any]]) -> SgmKohyaNaming:
        unet = configs.get("unet")
        return self if unet is None else SgmKohyaNaming(unet_layout(unet), self.implementation, self.dotted)

    def join(
        self, tensors: Mapping[str, torch.Tensor], alphas: Mapping[str, float]
    ) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
        """Every SGM module has one diffusers module: nothing to merge."""
        return dict(tensors), dict(alphas)

    def split(
        self, tensors: Mapping[str, torch.Tensor], alphas: Mapping[str, float]
    ) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
        return dict(tensors), dict(alphas)

    def whole_fused(
        self, tensors: Mapping[str, torch.Tensor], alphas: Mapping[str, float]
    ) -> tuple[dict[str, torch.Tensor], dict[str, float], list[FusedAdapter]]:
        return self.dotted.whole_fused(tensors, alphas)

    def to_kohya(self, module: str) -> str:
        component, _, path = module.partition(".")
        if component == "unet":
            sgm = self._table.map_key(path + ".")
            if sgm is None:
                raise KeyMapError(f"{module}: no SGM module of the SDXL UNet corresponds to it")
            path = sgm.removesuffix(".")
        return self.dotted.to_kohya(f"{component}.{path}")

    def from_kohya(self, name: str, *, hf_text_model: bool | None = None) -> str:
        module = self.dotted.from_kohya(name, hf_text_model=hf_text_model)
        component, _, path = module.partition(".")
        if component != "unet":
            return module
        diffusers = self._table.map_key(path + ".", reverse=True)
        if diffusers is not None:
            return f"unet.{diffusers.removesuffix('.')}"
        if self._table.map_key(path + ".") is not None:
            return module  # a diffusers path already (diffusers' `convert_state_dict_to_kohya`, SimpleTuner)
        raise KeyMapError(f"{name}: {path} is not a module of this SDXL UNet")


LORA_NAMING = SgmKohyaNaming()
