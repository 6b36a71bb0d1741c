"""Regional compilation of the denoiser (`training.compile`): torch.compile of its repeated blocks, cached.

Why regional: a training step of an uncompiled denoiser is bound by the host, not the GPU (issue 17:
SD 1.5's UNet launches about 5,000 kernels per step, and its GPU kernels run for 27 ms of a 160 ms
step). Compiling fuses the element-wise work between the large kernels. Compiling the whole denoiser
took 134 s for SD 1.5 on an H200; its blocks repeat (16 transformer blocks in SD 1.5's UNet, dozens
in a DiT), and one compiled block serves every instance of its class, so compiling the blocks costs
a fraction of that and keeps most of the gain. The blocks are the classes a diffusers model names in
`_repeated_blocks` (diffusers' own `compile_repeated_blocks` compiles them); a denoiser that names
none gets the elements of its lists of same-class modules (a DiT's `transformer_blocks`), outermost
first. Counted on SD 1.5's UNet (operators of one forward pass), its `BasicTransformerBlock`s run
55 % of them without LoRA and 71 % with LoRA on the attention projections; the `ResnetBlock2D`s run
most of the rest (32 %, 21 % with LoRA), and compiling those too is the next thing to measure.

Each block is compiled in place (`nn.Module.compile`), so parameter names, state dicts, the peft
layers inside the blocks (injected before this runs), gradient checkpointing around the blocks,
backups and savers see the module they always saw. The first step compiles for its shapes; a second
bucket shape recompiles once with dynamic sizes (torch's automatic dynamic shapes), which the later
buckets reuse. Previews and validation run the blocks uncompiled (`eager()`): an inference graph
per preview resolution would cost minutes for a few images.

The cache: inductor's FX-graph and AOTAutograd caches hold the compiled code, keyed by graph, shapes
and versions. `use_compile_cache` points them at one folder that outlives the machine's temporary
files (`compile_cache_dir`), so a second run with the same model and buckets skips the compilation
and only traces.

CUDA graphs are not used, for now, for these reasons:
- Shapes are static only per bucket: one recording per (bucket, batch) shape, and with regional
  compilation one per block instance too (each instance's parameters live at their own addresses;
  torch re-records per parameter set, pytorch/pytorch#126822), each holding its own memory pool: a
  few dozen buckets times 16 to 57 blocks, forward and backward.
- A whole-step capture (`torch.cuda.graph` around forward, backward and update) would also need the
  optimizer inside the graph with a tensor learning rate (the schedule changes it every step), the
  noise generator and peft's dropout registered as graph-safe RNG, and static input buffers per
  bucket; the step's one unavoidable data-dependent decision, the NaN guard, is already made on the
  device (`trainer.readback`), so nothing else in the step stops a capture.
- It cannot be measured here: the GPU benchmark first measures compilation against the bare loop,
  and CUDA graphs are the next step once those numbers are in.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

CACHE_VARIABLE = "TORCHINDUCTOR_CACHE_DIR"
"""Inductor's cache folder (it holds Triton's cache too); set by the user, it wins over our default."""

BACKEND = "inductor"
"""torch.compile's backend; tests on machines without a working C++ toolchain may swap in `aot_eager`."""


def compile_cache_dir() -> Path:
    """Where compiled code is kept: `$TORCHINDUCTOR_CACHE_DIR`, else the user's cache folder.

    torch's own default is a folder under the temporary directory, which a reboot empties.
    """
    configured = os.environ.get(CACHE_VARIABLE)
    if configured:
        return Path(configured)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "onetrainer" / "torch-compile"


def use_compile_cache() -> Path:
    """Point inductor's caches at `compile_cache_dir()` for this process; returns the folder."""
    folder = compile_cache_dir()
    folder.mkdir(parents=True, exist_ok=True)
    os.environ[CACHE_VARIABLE] = str(folder)
    return folder


def repeated_block_classes(denoiser: torch.nn.Module) -> tuple[str, ...]:
    """The class names of the denoiser's repeated blocks: its `_repeated_blocks`, else found from its lists."""
    import torch

    named = tuple(getattr(denoiser, "_repeated_blocks", None) or ())
    if named:
        return named
    found: list[str] = []
    for module in denoiser.modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) > 1:
            classes = {type(element).__name__ for element in module}
            if len(classes) == 1 and (name := classes.pop()) not in found:
                found.append(name)
    return tuple(found)


def compile_repeated_blocks(denoiser: torch.nn.Module, *, backend: str | None = None) -> int:
    """Compile every repeated block of `denoiser` in place; returns how many modules were compiled.

    diffusers' `compile_repeated_blocks` does it where the model names its blocks; otherwise each
    outermost instance of a found class is compiled (a block inside a compiled block is part of it).
    """
    from onetrainer.util.errors import UserError

    chosen = backend or BACKEND
    classes = repeated_block_classes(denoiser)
    if not classes:
        raise UserError(
            f"training.compile: {type(denoiser).__name__} has no repeated blocks to compile",
            where="training.compile",
            hint="Set training.compile=false for this model.",
        )
    use_compile_cache()
    diffusers_compile = getattr(denoiser, "compile_repeated_blocks", None)
    if getattr(denoiser, "_repeated_blocks", None) and callable(diffusers_compile):
        diffusers_compile(backend=chosen)
        return sum(type(module).__name__ in classes for module in denoiser.modules())
    compiled: list[str] = []
    for name, module in denoiser.named_modules():
        inside = any(name.startswith(f"{outer}.") for outer in compiled)
        if type(module).__name__ in classes and not inside:
            module.compile(backend=chosen)
            compiled.append(name)
    return len(compiled)


@contextlib.contextmanager
def eager() -> Iterator[None]:
    """Run compiled modules uncompiled for the block (previews, validation, FLOP counting)."""
    import torch

    with torch.compiler.set_stance("force_eager"):
        yield


def use_channels_last(denoiser: Any) -> None:
    """`training.channels_last`: a UNet's convolution weights channels-last. Before the placement: converting
    replaces each weight's data, so done after it, it would replace offloaded blocks' pinned masters with
    pageable copies."""
    import torch

    denoiser.to(memory_format=torch.channels_last)
