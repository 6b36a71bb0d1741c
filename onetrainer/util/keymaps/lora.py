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

How modules are named is the family's (`FamilySpec.lora_naming`): the diffusers module paths for some
(`keymaps.kohya_names`), the original checkpoint's for others.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from onetrainer.util.keymaps.engine import KeyMapError

if TYPE_CHECKING:
    import torch

    from onetrainer.util.family import LoraNaming

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


def _group(
    sd: Mapping[str, torch.Tensor], split: Callable[[str], tuple[str, str]]
) -> dict[str, dict[str, torch.Tensor]]:
    modules: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in sd.items():
        module, param = split(key)
        modules.setdefault(module, {})[param] = tensor
    return modules


def peft_to_kohya(
    sd: Mapping[str, torch.Tensor],
    alphas: Mapping[str, float] | float | None,
    naming: LoraNaming,
) -> dict[str, torch.Tensor]:
    """Rename a component-prefixed PEFT adapter state dict to kohya/LyCORIS keys, adding `.alpha`.

    `alphas` maps `component.module` to alpha (kohya semantics, see the module docstring); one number
    applies to every module, and None (or a missing module) writes alpha = rank, i.e. scale 1.
    Alphas are stored in fp32 whatever the weights' dtype: an fp16 or bf16 alpha would round the scale.
    Modules the family's original model fuses are merged first (`LoraNaming.join`).
    """
    import torch

    resolved: dict[str, float] = {}
    for module, params in _group(sd, split_peft_key).items():
        alpha = alphas.get(module) if isinstance(alphas, Mapping) else alphas
        if alpha is None:
            rank = module_rank(params)
            alpha = rank if rank is not None else 1
        resolved[module] = float(alpha)
    joined, joined_alphas = naming.join(sd, resolved)
    out: dict[str, torch.Tensor] = {}
    for module, params in _group(joined, split_peft_key).items():
        name = naming.to_kohya(module)
        for param, tensor in params.items():
            if param == "lora_magnitude_vector":
                tensor = _magnitude_to_kohya(tensor, params["lora_A.weight"])
            out[f"{name}.{PEFT_TO_KOHYA[param]}"] = tensor
        out[f"{name}.alpha"] = torch.tensor(joined_alphas[module], dtype=torch.float32)
    return out


def kohya_to_peft(
    sd: Mapping[str, torch.Tensor], naming: LoraNaming
) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """Rename a kohya/LyCORIS state dict to component-prefixed PEFT keys; returns (tensors, alphas).

    A module without `.alpha` gets alpha = rank (scale 1), as kohya loaders treat it.
    """
    return naming.split(*kohya_renamed(sd, naming))


def kohya_renamed(
    sd: Mapping[str, torch.Tensor], naming: LoraNaming
) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """`kohya_to_peft` before `LoraNaming.split`: neutral parameter names on the modules `from_kohya` names
    (original fused layers still whole)."""

    def split(key: str) -> tuple[str, str]:
        name, _, param = key.partition(".")
        if param != "alpha" and param not in KOHYA_TO_PEFT:
            raise KeyMapError(f"{key}: unknown kohya/LyCORIS parameter {param!r}")
        return name, param

    out: dict[str, torch.Tensor] = {}
    alphas: dict[str, float] = {}
    for name, params in _group(sd, split).items():
        module = naming.from_kohya(name)
        for param, tensor in params.items():
            if param == "alpha":
                continue
            if param == "dora_scale":
                if "lora_up.weight" not in params or "lora_down.weight" not in params:
                    raise KeyMapError(
                        f"{name}: weight decomposition (DoRA) on a LoHa or LoKr is not supported",
                        hint="Use a DoRA (lora.type: dora) or a LoHa / LoKr without dora_wd.",
                    )
                neutral, tensor = _magnitude_to_peft(tensor, params["lora_up.weight"], params["lora_down.weight"], name)
                out[f"{module}.{neutral}"] = tensor
                continue
            out[f"{module}.{KOHYA_TO_PEFT[param]}"] = tensor
        rank = module_rank(params)
        alphas[module] = float(params["alpha"].item()) if "alpha" in params else float(rank or 1)
    return out, alphas


ARCHITECTURE_KEY = "onetrainer_architecture"
"""Header key of the component configs (JSON) a LoRA's kohya names were made for, written only where they
differ from the family's released architecture's names (`LoraNaming.for_model`), so our own files of
such models (tiny test models, distilled UNets) read back and convert without naming their model."""


def recorded_architecture(metadata: Mapping[str, str]) -> dict[str, dict[str, Any]] | None:
    """The component configs a LoRA file records under `ARCHITECTURE_KEY`, or None."""
    import json

    text = metadata.get(ARCHITECTURE_KEY)
    if not text:
        return None
    try:
        configs = json.loads(text)
    except json.JSONDecodeError:
        return None
    return configs if isinstance(configs, dict) else None


def architecture_record(naming: LoraNaming, configs: Mapping[str, Mapping[str, Any]] | None) -> dict[str, str]:
    """The header entry recording `configs` when the kohya names made for them differ from `naming`'s own."""
    import json

    if configs is None or naming.for_model(configs) == naming:
        return {}
    wanted = {name: dict(config) for name, config in configs.items() if name != "scheduler"}
    return {ARCHITECTURE_KEY: json.dumps(wanted, sort_keys=True, default=str)}


LORA_FORMATS = ("kohya", "lycoris-loha", "lycoris-lokr", "diffusers", "peft", "comfy")
KOHYA_PREFIXES = ("lora_unet_", "lora_te", "lora_transformer_", "lycoris_")
"""How kohya / LyCORIS module names start, whatever the family (`lora_te1_`, `lora_te2_`, ... included);
`lycoris_` is LyCORIS' own wrapper prefix, over the denoiser's diffusers paths in SimpleTuner's files."""


def _component_names() -> set[str]:
    """The diffusers component names of every registered family: the first segment of diffusers LoRA keys."""
    from onetrainer.util.family import families

    return {name for spec in families() for name in spec.component_names}


def detect_lora_format(keys: Iterable[str]) -> str | None:
    """Guess a LoRA file's layout from its key names: one of `LORA_FORMATS`, or None.

    - kohya: `lora_unet_*` / `lora_te*_` names with `.lora_down/.lora_up` (LoCon and DoRA included);
      the same names with `.hada_*` or `.lokr_*` tensors are LyCORIS LoHa / LoKr.
    - diffusers: module paths prefixed with a component name (`unet.`, `text_encoder.`, ...) with `lora_A/B`
      (or the older `.lora.down.weight`, `.processor.to_q_lora.down.weight`, `.lora_linear_layer.` names).
    - comfy: `diffusion_model.` prefixed native paths (ComfyUI's DiT style).
    - peft: bare module paths (`get_peft_model_state_dict` of one model) with `lora_A/B`.
    """
    keys = list(keys)
    if not keys:
        return None
    if any(k.startswith(KOHYA_PREFIXES) for k in keys):
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
        "_lora.down.",
        "_lora.up.",
        ".lora_linear_layer.",
        ".hada_",
        ".lokr_",
    )
    if not any(marker in k for k in keys for marker in adapter):
        return None
    if any(k.startswith("diffusion_model.") for k in keys):
        return "comfy"
    if any(k.partition(".")[0] in _component_names() for k in keys):
        return "diffusers"
    return "peft"
