"""The blocks of a network: the units its gradient checkpointing recomputes, which layer offloading moves.

A family names its denoiser's blocks in its spec (`Component.blocks`, module-path regexes) where its
network nests them; the default is the entries of the network's top-level `ModuleList`s (a DiT's
`transformer_blocks`). Offloading must use the units checkpointing recomputes, so that a block's
weights are copied back in when its forward pass runs again during the backward pass.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

UNET_BLOCKS = (r"\.resnets\.\d+$", r"\.transformer_blocks\.\d+$")
"""diffusers' UNet2DConditionModel: each ResNet block and each attention block is checkpointed on its own."""


def find_blocks(module: torch.nn.Module, patterns: Sequence[str] = ()) -> list[tuple[str, torch.nn.Module]]:
    """(path, block) in module order: the modules whose "." + path matches a pattern, or by default the
    entries of `module`'s top-level ModuleLists."""
    import torch

    if patterns:
        compiled = [re.compile(pattern) for pattern in patterns]
        return [
            (name, child)
            for name, child in module.named_modules()
            if name and any(pattern.search("." + name) for pattern in compiled)
        ]
    return [
        (f"{name}.{index}", block)
        for name, child in module.named_children()
        if isinstance(child, torch.nn.ModuleList)
        for index, block in enumerate(child)
    ]
