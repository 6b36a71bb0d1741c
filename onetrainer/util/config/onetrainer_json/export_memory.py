"""Export the memory settings of a run config: layer and activation offloading of the denoiser, the fused
back pass and stochastic rounding (OneTrainer's optimizer flags). Per-part weight dtypes go with the parts.

OneTrainer keeps these per part (offloading) and per optimizer (the flags, which only some of its
optimizers take); what it cannot hold is listed.
"""

from __future__ import annotations

from typing import Any

from onetrainer.util.config.onetrainer_json.findings import View
from onetrainer.util.config.onetrainer_json.import_memory import UNET
from onetrainer.util.config.onetrainer_json.tables import (
    FUSED_BACK_PASS_OPTIMIZERS,
    FUSED_KERNELS,
    STOCHASTIC_ROUNDING_OPTIMIZERS,
)
from onetrainer.util.family import FamilySpec


def export_memory(ours: View, ot: dict[str, Any], spec: FamilySpec) -> None:
    training = ours.child("training")
    denoiser = ours.child("parts").child(spec.denoiser.name)
    target = ot[spec.denoiser.name]
    blocks = denoiser["offload_blocks"]
    if blocks and spec.denoiser.name == UNET:
        denoiser.unsupported("offload_blocks", "OneTrainer offloads the layers of transformers only, not of a UNet")
    elif blocks and not isinstance(blocks, float):
        denoiser.unsupported("offload_blocks", "OneTrainer offloads a fraction of the blocks: write one (e.g. 0.5)")
    elif blocks:
        target["offload_fraction"] = blocks
    target["activation_offloading"] = training["activation_offload"]
    training.refuse("optimizer_offload", "OneTrainer keeps the optimizer states on the training device")
    optimizer = ot["optimizer"]
    name = optimizer["optimizer"]
    fused = training["fused_backward"]
    if fused and name not in FUSED_BACK_PASS_OPTIMIZERS:
        training.unsupported("fused_backward", f"OneTrainer's {name} optimizer has no fused back pass")
        fused = False
    rounding = training["stochastic_rounding"]
    if rounding and name not in STOCHASTIC_ROUNDING_OPTIMIZERS:
        training.unsupported(
            "stochastic_rounding",
            f"OneTrainer documents stochastic rounding for {', '.join(STOCHASTIC_ROUNDING_OPTIMIZERS)}, not {name}",
        )
        rounding = False
    optimizer["fused_back_pass"] = fused
    optimizer["stochastic_rounding"] = rounding
    if (fused or rounding) and name in FUSED_KERNELS:
        optimizer["fused"] = optimizer["foreach"] = False
    ot["optimizer_defaults"] = {name: dict(optimizer)}
