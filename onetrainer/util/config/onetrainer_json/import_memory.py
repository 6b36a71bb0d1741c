"""Import OneTrainer's memory settings: per-part weight dtypes, layer and activation offloading, the fused
back pass and stochastic rounding.

They are mapped last, because which combinations can work depends on what the other mappers chose
(which parts train, the optimizer, the precision, checkpointing); `util.config.memory` says why each
limit exists. A value we cannot honour is reported and replaced by the nearest one our config check
accepts, so `train --allow-unsupported` still runs.
"""

from __future__ import annotations

from onetrainer.util.config.memory import PER_TENSOR
from onetrainer.util.config.onetrainer_json.findings import View
from onetrainer.util.config.onetrainer_json.tables import WEIGHT_DTYPES, WEIGHT_ONLY
from onetrainer.util.config.onetrainer_json.target import Target
from onetrainer.util.dtypes import QUANTISED
from onetrainer.util.family import Component, FamilySpec, Role

PER_TENSOR_NAMES = tuple(optimizer.value for optimizer in PER_TENSOR)
ONE_AT_A_TIME = "steps one tensor at a time, which the {} optimizer cannot (its update depends on every tensor)"
NOT_WITH_FP16 = "does not combine with train_dtype FLOAT_16, whose loss scaling skips whole steps"
ELSEWHERE = "only the denoiser's {} are offloaded here; this part's stay on the device (more memory, the same results)"
UNET = "unet"
"""OneTrainer offloads the layers of its transformer parts only (the reference: not for `unet`)."""


def map_memory(config: View, optimizer: View, out: Target, spec: FamilySpec, method: str) -> None:
    blocker = _rounding_blocker(optimizer, out)
    rounded = [
        component.name
        for component in spec.components
        if _weight_dtype(config.child(component.name), out, component, method, blocker) == "bf16-trained"
    ]
    _offloading(config, out, spec)
    if rounded:
        out.set("training.stochastic_rounding", True)
    elif blocker is None:
        optimizer.ignore(
            "stochastic_rounding",
            "rounds the updates of bf16 trained weights; none train here (LoRA and embedding weights train in fp32)",
        )
    else:
        optimizer.skip("stochastic_rounding")
    _fused_back_pass(config, optimizer, out)


def _rounding_blocker(optimizer: View, out: Target) -> str | None:
    """Why trained bf16 weights cannot be rounded stochastically here; None when they can."""
    if not optimizer["stochastic_rounding"]:
        return "and optimizer.stochastic_rounding is off"
    name = out.get("training.optimizer")
    if name not in PER_TENSOR_NAMES:
        return "and stochastic rounding " + ONE_AT_A_TIME.format(name)
    if out.get("training.precision") == "fp16":
        return "and stochastic rounding " + NOT_WITH_FP16
    return None


def _weight_dtype(part: View, out: Target, component: Component, method: str, blocker: str | None) -> str:
    """Set `parts.<name>.weight_dtype`; returns ours, or "bf16-trained" for trained weights kept in bf16."""
    name = component.name
    value = part["weight_dtype"]
    ours = WEIGHT_DTYPES.get(value, "fp32")
    if value in WEIGHT_ONLY:
        ours = WEIGHT_ONLY[value]
        part.unsupported("weight_dtype", f"activations are not quantised here: {ours} weights only")
    elif value not in WEIGHT_DTYPES and value != "NONE":
        part.unsupported("weight_dtype", f"weights are stored in {', '.join(WEIGHT_DTYPES.values())}; fp32 here")
    trains = bool(out.get(f"parts.{name}.train")) and component.role is not Role.VAE
    result = ours
    if ours in QUANTISED and component.role is Role.VAE:
        part.unsupported("weight_dtype", f"{ours} quantises linear layers only, and the VAE is convolutions; fp32 here")
        ours = result = "fp32"
    elif trains and method == "full":
        ours, result = _trained_dtype(part, ours, blocker)
    elif method == "full" and ours in QUANTISED:
        part.unsupported(
            "weight_dtype",
            f"a full fine-tune saves whole-model files, which would hold this frozen part's {ours} weights instead "
            "of its own; fp32 here (bf16 takes half the memory)",
        )
        ours = result = "fp32"
    elif trains and method == "lora" and ours == "nf4" and out.get("lora.type") in ("loha", "lokr"):
        part.unsupported(
            "weight_dtype",
            f"a {out.get('lora.type')} adapter cannot train on nf4 weights (peft's LyCORIS layers read the weight's "
            "shape, which bitsandbytes packs); int8 here",
        )
        ours = result = "int8"
    out.set(f"parts.{name}.weight_dtype", ours)
    return result


def _trained_dtype(part: View, ours: str, blocker: str | None) -> tuple[str, str]:
    """The storage of a fully trained part's weights: fp32, or bf16 where they are rounded stochastically."""
    if ours in QUANTISED:
        why = f"{ours} is a frozen, weight-only format; a fully trained part keeps fp32 (or bf16) weights"
    elif ours == "fp16":
        why = "trained weights in fp16 overflow and lose small updates"
    elif ours == "bf16" and blocker is not None:
        why = f"trained weights in bf16 lose every update smaller than 1/256 of the weight, {blocker}"
    else:
        return ours, "bf16-trained" if ours == "bf16" else ours
    part.unsupported("weight_dtype", f"{why}; fp32 here")
    return "fp32", "fp32"


def _offloading(config: View, out: Target, spec: FamilySpec) -> None:
    checkpointing = bool(out.get("training.gradient_checkpointing"))
    for component in spec.components:
        part = config.child(component.name)
        if component.role is Role.DENOISER:
            _layer_offload(part, out, component.name, checkpointing)
            _activation_offload(part, out, checkpointing)
        else:
            part.ignore("offload_fraction", ELSEWHERE.format("blocks"))
            part.ignore("activation_offloading", ELSEWHERE.format("activations"))
    if out.get(f"parts.{spec.denoiser.name}.offload_blocks"):
        config.ignore("async_offloading", "blocks are always copied ahead of use here, beside the computation")
    else:
        config.ignore("async_offloading", "only used with layer offloading")


def _layer_offload(part: View, out: Target, name: str, checkpointing: bool) -> None:
    fraction = part["offload_fraction"]
    if not fraction:
        return
    if name == UNET:
        part.ignore("offload_fraction", "OneTrainer offloads the layers of transformers only, not of a UNet")
    elif not 0 < fraction <= 1:
        part.unsupported("offload_fraction", "a fraction of the blocks is between 0 and 1; no offloading here")
    elif out.get(f"parts.{name}.weight_dtype") == "nf4":
        part.unsupported(
            "offload_fraction",
            "layer offloading does not take nf4 weights (bitsandbytes moves a 4-bit weight's scales in place, so a "
            "block could not keep its CPU copy): use FLOAT_8 or INT_8 weights with it; no offloading here",
        )
    elif not checkpointing:
        part.unsupported(
            "offload_fraction",
            "needs gradient_checkpointing: without it autograd keeps every block's weights on the GPU until the "
            "backward pass, so offloading saves nothing; no offloading here",
        )
    else:
        out.set(f"parts.{name}.offload_blocks", float(fraction))


def _activation_offload(part: View, out: Target, checkpointing: bool) -> None:
    if not part["activation_offloading"]:
        return
    if checkpointing:
        out.set("training.activation_offload", True)
    else:
        part.unsupported(
            "activation_offloading",
            "offloads the activations checkpointing keeps, and gradient_checkpointing is off (every activation "
            "would go to the CPU and back); not offloaded here",
        )


def _fused_back_pass(config: View, optimizer: View, out: Target) -> None:
    if not optimizer["fused_back_pass"]:
        return
    name = out.get("training.optimizer")
    accumulation = out.get("training.gradient_accumulation_steps")
    if name not in PER_TENSOR_NAMES:
        why = ONE_AT_A_TIME.format(name) + f"; use one of {', '.join(PER_TENSOR_NAMES)}"
    elif out.get("training.precision") == "fp16":
        why = NOT_WITH_FP16
    elif accumulation != 1:
        why = f"updates each tensor in the backward pass, so no gradients accumulate over {accumulation} batches"
    else:
        out.set("training.fused_backward", True)
        if out.get("training.max_grad_norm") is not None:
            config.unsupported(
                "clip_grad_norm",
                "the fused back pass updates each tensor before the total gradient norm is known, so nothing is "
                "clipped here",
            )
            out.set("training.max_grad_norm", None)
        return
    optimizer.unsupported("fused_back_pass", f"{why}; the optimizer steps after the backward pass here")
