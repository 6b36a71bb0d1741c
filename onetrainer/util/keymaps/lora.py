"""LoRA / LyCORIS key names: PEFT (and the diffusers LoRA file) <-> kohya, plus format detection.

Two layouts, one neutral form:
- **peft**: what `get_peft_model_state_dict` returns, with the diffusers component in front, which is
  also the layout of the file `pipe.load_lora_weights` reads: `unet.<module>.lora_A.weight`,
  `text_encoder.<module>.lora_B.weight`, LoHa `...hada_w1_a`, LoKr `...lokr_w1`, DoRA
  `...lora_magnitude_vector` (one magnitude per output row, peft's DoRA) or
  `...lora_magnitude_vector.input_magnitude` (one per input column, the DoRA peft does not have; see
  `model.adapters.dora`). PEFT keeps alpha in its config, so here it travels beside the tensors as
  `alphas = {"unet.<module>": alpha}`.
- **kohya** (also LyCORIS): `lora_unet_<module with "." -> "_">.lora_down.weight`, `.lora_up.weight`,
  `.alpha` (0-dim), `.hada_w1_a`..., `.lokr_w1`..., `.dora_scale`; text encoder `lora_te_...`. Like
  LyCORIS and ComfyUI, the shape of `dora_scale` says its axis: [out, 1] (or [out, 1, 1, 1]) per output
  row, [1, in] (or [1, in, 1, 1]) per input column.

Alpha semantics are kohya's everywhere: the delta is scaled by alpha / rank, where rank is read off
the tensors (lora_down rows, hada_w1_b rows, the rank of a decomposed LoKr factor); a missing alpha
means scale 1, and a LoKr module whose two factors are both full matrices is never scaled (LyCORIS,
ComfyUI and diffusers all do this). PEFT differs only in that last case; `peft_adapter_state` bakes
PEFT's scale into the factor there, so the neutral form stays exact.

Which UNet naming for SD 1.x/2.x: diffusers module paths (`lora_unet_down_blocks_0_attentions_0_
transformer_blocks_0_attn1_to_q`), not LDM paths. sd-scripts trains SD1/2 LoRAs on a UNet with
diffusers module names (only its SDXL UNet uses LDM names), so this is what nearly every SD1/2 LoRA in
the wild uses: A1111/Forge convert these names to their LDM modules (`convert_diffusers_name_to_
compvis`), ComfyUI maps both namings, and diffusers' kohya loader reads them. The text encoder uses
transformers CLIP paths with `text_model_` kept, for SD2 too (A1111 fuses q/k/v itself for OpenCLIP).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

from onetrainer.util.keymaps.engine import KeyMapError

if TYPE_CHECKING:
    import torch

# (kohya / LyCORIS parameter, PEFT parameter). LoHa and LoKr names are the same on both sides
# because PEFT ported them from LyCORIS, with the same shapes.
PARAM_NAMES = (
    ("lora_down.weight", "lora_A.weight"),
    ("lora_up.weight", "lora_B.weight"),
    ("dora_scale", "lora_magnitude_vector"),
    *((name, name) for name in ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "hada_t1", "hada_t2")),
    *((name, name) for name in ("lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b", "lokr_t2")),
)
INPUT_MAGNITUDE = "lora_magnitude_vector.input_magnitude"
"""A DoRA magnitude per input column, as `get_peft_model_state_dict` names our input-axis DoRA layers."""
KOHYA_TO_PEFT = dict(PARAM_NAMES)
PEFT_TO_KOHYA = {peft: kohya for kohya, peft in PARAM_NAMES} | {INPUT_MAGNITUDE: "dora_scale"}

# kohya module prefix <-> diffusers component, per family.
COMPONENT_PREFIXES = {
    "sd15": (("lora_unet_", "unet"), ("lora_te_", "text_encoder")),
    "sd2": (("lora_unet_", "unet"), ("lora_te_", "text_encoder")),
    "sdxl": (("lora_unet_", "unet"), ("lora_te1_", "text_encoder"), ("lora_te2_", "text_encoder_2")),
}
# Text-encoder components and whether their class has a projection (SDXL's second encoder does).
TEXT_ENCODERS = {"text_encoder": False, "text_encoder_2": True}
CLIP_TEXT_MODEL_CHILDREN = ("encoder.", "embeddings.", "final_layer_norm.")

# Module-path identifiers that themselves contain "_": kohya names replace every "." by "_", so these
# are re-joined when reading a name back. Everything else between underscores is one path segment.
COMPOUND_NAMES = frozenset(
    {
        "down_blocks", "up_blocks", "mid_block", "transformer_blocks", "to_q", "to_k", "to_v", "to_out",
        "proj_in", "proj_out", "time_emb_proj", "conv_shortcut", "conv_in", "conv_out", "conv_norm_out",
        "time_embedding", "linear_1", "linear_2", "add_embedding", "text_model", "self_attn", "q_proj",
        "k_proj", "v_proj", "out_proj", "layer_norm1", "layer_norm2", "final_layer_norm", "token_embedding",
        "position_embedding", "text_projection",
    }
)  # fmt: skip
_LONGEST_COMPOUND = max(name.count("_") + 1 for name in COMPOUND_NAMES)


def _prefixes(family: str) -> tuple[tuple[str, str], ...]:
    if family not in COMPONENT_PREFIXES:
        raise KeyMapError(f"no LoRA naming for family {family!r}", hint=f"expected one of {tuple(COMPONENT_PREFIXES)}")
    return COMPONENT_PREFIXES[family]


def kohya_module_name(module: str, family: str) -> str:
    """`unet.down_blocks.0.resnets.0.conv1` -> `lora_unet_down_blocks_0_resnets_0_conv1`."""
    component, _, path = module.partition(".")
    prefix = next((p for p, c in _prefixes(family) if c == component), None)
    if prefix is None:
        raise KeyMapError(f"{module}: component {component!r} has no kohya prefix for {family}")
    if component in TEXT_ENCODERS and path.startswith(CLIP_TEXT_MODEL_CHILDREN):
        path = "text_model." + path  # transformers >= 5.6 dropped it from CLIPTextModel; kohya keeps it
    return prefix + path.replace(".", "_")


def peft_module_path(kohya_name: str, family: str, *, hf_text_model: bool | None = None) -> str:
    """`lora_te_text_model_encoder_layers_0_mlp_fc1` -> `text_encoder.encoder.layers.0.mlp.fc1`.

    `hf_text_model=None` keeps `text_model.` only if the installed transformers' CLIP class does.
    """
    matches = [(p, c) for p, c in _prefixes(family) if kohya_name.startswith(p)]
    if not matches:
        raise KeyMapError(f"{kohya_name}: not a {family} kohya module name")
    prefix, component = max(matches, key=lambda pc: len(pc[0]))
    tokens = kohya_name[len(prefix) :].split("_")
    parts: list[str] = []
    while tokens:
        for size in range(min(_LONGEST_COMPOUND, len(tokens)), 0, -1):
            candidate = "_".join(tokens[:size])
            if size == 1 or candidate in COMPOUND_NAMES:
                parts.append(candidate)
                del tokens[:size]
                break
    path = ".".join(parts)
    if component in TEXT_ENCODERS and path.startswith("text_model."):
        if hf_text_model is None:
            from onetrainer.util.keymaps.single_file import clip_text_model_is_wrapped

            hf_text_model = clip_text_model_is_wrapped(with_projection=TEXT_ENCODERS[component])
        if not hf_text_model:
            path = path.removeprefix("text_model.")
    return f"{component}.{path}"


def split_peft_key(key: str) -> tuple[str, str]:
    """`unet.<module>.lora_A.weight` -> (`unet.<module>`, `lora_A.weight`)."""
    for param in sorted(PEFT_TO_KOHYA, key=len, reverse=True):
        if key.endswith("." + param):
            return key[: -len(param) - 1], param
    raise KeyMapError(f"{key}: not a PEFT LoRA/LoHa/LoKr parameter", hint="expected get_peft_model_state_dict keys")


def module_rank(params: Mapping[str, torch.Tensor]) -> int | None:
    """The rank alpha is divided by (kohya names or PEFT names); None for a LoKr of two full factors."""
    for name in ("lora_down.weight", "lora_A.weight", "hada_w1_b", "lokr_w2_b", "lokr_w1_b"):
        if name in params:
            return int(params[name].shape[0])
    return None


def _magnitude_to_kohya(magnitude: torch.Tensor, down: torch.Tensor) -> torch.Tensor:
    """PEFT keeps one norm per output row as [out] (Linear) or [1, out, 1, 1] (conv); LyCORIS stores
    it "on the output axis" as [out, 1] / [out, 1, 1, 1], which is how ComfyUI tells the two apart."""
    return magnitude.reshape(-1, *([1] * (down.ndim - 1)))


def _magnitude_to_peft(
    scale: torch.Tensor, up: torch.Tensor, down: torch.Tensor, module: str
) -> tuple[str, torch.Tensor]:
    """(neutral parameter name, tensor) of a `dora_scale`, by its axis (read off its shape, as ComfyUI does)."""
    out, width = up.shape[0], down.shape[1]
    if scale.shape[0] == out and scale.numel() == out:
        return "lora_magnitude_vector", scale.reshape(out) if up.ndim == 2 else scale.reshape(1, out, 1, 1)
    if scale.shape[0] == 1 and scale.numel() == width:
        return INPUT_MAGNITUDE, scale.reshape(1, width, *([1] * (down.ndim - 2)))
    raise KeyMapError(
        f"{module}: dora_scale {tuple(scale.shape)} fits neither {out} output rows nor {width} input columns"
    )


def _group(sd: Mapping[str, torch.Tensor], split) -> dict[str, dict[str, torch.Tensor]]:
    modules: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in sd.items():
        module, param = split(key)
        modules.setdefault(module, {})[param] = tensor
    return modules


def peft_to_kohya(
    sd: Mapping[str, torch.Tensor],
    alphas: Mapping[str, float] | float | None = None,
    family: str = "sd15",
) -> dict[str, torch.Tensor]:
    """Rename a component-prefixed PEFT adapter state dict to kohya/LyCORIS keys, adding `.alpha`.

    `alphas` maps `component.module` to alpha (kohya semantics, see the module docstring); one number
    applies to every module, and None (or a missing module) writes alpha = rank, i.e. scale 1.
    Alphas are stored in the dtype of the module's weights, as sd-scripts does.
    """
    import torch

    out: dict[str, torch.Tensor] = {}
    for module, params in _group(sd, split_peft_key).items():
        name = kohya_module_name(module, family)
        for param, tensor in params.items():
            if param == "lora_magnitude_vector":
                tensor = _magnitude_to_kohya(tensor, params["lora_A.weight"])
            out[f"{name}.{PEFT_TO_KOHYA[param]}"] = tensor
        rank = module_rank(params)
        alpha = alphas.get(module) if isinstance(alphas, Mapping) else alphas
        if alpha is None:
            alpha = rank if rank is not None else 1
        out[f"{name}.alpha"] = torch.tensor(float(alpha), dtype=next(iter(params.values())).dtype)
    return out


def kohya_to_peft(
    sd: Mapping[str, torch.Tensor],
    family: str = "sd15",
    *,
    hf_text_model: bool | None = None,
) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """Rename a kohya/LyCORIS state dict to component-prefixed PEFT keys; returns (tensors, alphas).

    A module without `.alpha` gets alpha = rank (scale 1), as kohya loaders treat it.
    """

    def split(key: str) -> tuple[str, str]:
        name, _, param = key.partition(".")
        if param != "alpha" and param not in KOHYA_TO_PEFT:
            raise KeyMapError(f"{key}: unknown kohya/LyCORIS parameter {param!r}")
        return name, param

    out: dict[str, torch.Tensor] = {}
    alphas: dict[str, float] = {}
    for name, params in _group(sd, split).items():
        module = peft_module_path(name, family, hf_text_model=hf_text_model)
        for param, tensor in params.items():
            if param == "alpha":
                continue
            if param == "dora_scale":
                neutral, tensor = _magnitude_to_peft(tensor, params["lora_up.weight"], params["lora_down.weight"], name)
                out[f"{module}.{neutral}"] = tensor
                continue
            out[f"{module}.{KOHYA_TO_PEFT[param]}"] = tensor
        rank = module_rank(params)
        alphas[module] = float(params["alpha"].item()) if "alpha" in params else float(rank or 1)
    return out, alphas


LORA_FORMATS = ("kohya", "lycoris-loha", "lycoris-lokr", "diffusers", "peft", "comfy")


def detect_lora_format(keys: Iterable[str]) -> str | None:
    """Guess a LoRA file's layout from its key names: one of `LORA_FORMATS`, or None.

    - kohya: `lora_unet_*` / `lora_te*_` names with `.lora_down/.lora_up` (LoCon and DoRA included);
      the same names with `.hada_*` or `.lokr_*` tensors are LyCORIS LoHa / LoKr.
    - diffusers: `unet.` / `text_encoder.` / `transformer.` prefixed module paths with `lora_A/B`
      (or the older `.lora.down.weight` attention-processor names).
    - comfy: `diffusion_model.` prefixed native paths (ComfyUI's DiT style).
    - peft: bare module paths (`get_peft_model_state_dict` of one model) with `lora_A/B`.
    """
    keys = list(keys)
    if not keys:
        return None
    if any(k.startswith(("lora_unet_", "lora_te_", "lora_te1_", "lora_te2_", "lora_te3_")) for k in keys):
        if any(".hada_" in k for k in keys):
            return "lycoris-loha"
        if any(".lokr_" in k for k in keys):
            return "lycoris-lokr"
        return "kohya"
    adapter = (
        ".lora_A.",
        ".lora_B.",
        ".lora_down.",
        ".lora_up.",
        ".lora.down.",
        ".lora.up.",
        ".hada_",
        ".lokr_",
    )
    if not any(marker in k for k in keys for marker in adapter):
        return None
    if any(k.startswith("diffusion_model.") for k in keys):
        return "comfy"
    if any(k.startswith(("unet.", "text_encoder.", "text_encoder_2.", "transformer.")) for k in keys):
        return "diffusers"
    return "peft"
