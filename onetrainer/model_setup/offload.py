"""Layer offloading: some of the denoiser's blocks wait in CPU memory and are copied in ahead of use.

Why our own hooks and not diffusers' group offloading: group offloading swaps `param.data` between
devices, which is sound for inference only. In training, autograd keeps the very tensors a forward
pass used until the backward pass needs them, and the gradients of trained weights must reach the
tensors the optimizer holds; a `.data` swap breaks both (the saved tensor changes device underneath
autograd, a gradient lands on a tensor whose data moved).

How it works, per offloaded block (a unit gradient checkpointing recomputes, `model.blocks`):

- Between uses the block's weights are their CPU *masters* (pinned when the device is a GPU, quantised
  ones too). Frozen weights are always offloaded; trained ones too when the part is fully trained (the
  optimizer then holds the masters and updates them in CPU memory), while adapter weights stay on the
  device.
- A forward pre-hook puts device copies in the block's modules (`module._parameters`, as
  `torch.func.functional_call` swaps tensors in); a trained weight's copy is the output of
  `_Onload`, whose backward brings the gradient to the master. That copy to the CPU blocks: autograd
  adds a CPU gradient into the master's `.grad`, and the fused backward pass steps on it, as soon as
  the copy returns, before a non-blocking one would have arrived. The forward hook puts the masters
  back: the copies live on only where autograd saved them, until their backward.
- With gradient checkpointing the forward pass saves nothing inside a block, and recomputing it in
  the backward pass runs the hooks again (`forward_context` turns off torch's early stop of a
  recomputation, which would skip the forward hook; blocks left with copies are swept anyway), so
  at most two blocks' copies exist at a time: the one in use and the next one, copied ahead on a
  side CUDA stream. Which block runs next is learnt from the passes run so far, as the successor of
  each `Run` (block run before, block running, gradients on or not): that tells a forward pass from a
  backward one and from a no-grad one, and a UNet's backward pass recomputes its blocks in another
  order than the reverse of its forward pass (skip connections). A fake-tensor pass (the FLOP count)
  uses copies of its own and learns nothing. From the third step on every block is copied ahead, the
  first of a pass too (by the last block of the pass before). A copy taken ahead of a block that does
  not run next is dropped; one taken ahead of a trained block that the optimizer updated since (the
  next step's first block, in a full fine-tune) is stale and taken again. Without checkpointing
  autograd would keep every copy until the backward pass, saving no memory, which is why the config
  asks for it.
- The side stream waits for the compute stream before each copy, so memory freed by a finished
  block is never overwritten while a kernel may still read it; the compute stream waits for a
  copy's event before the block runs. A block not copied ahead (the first steps, a stale copy) is
  copied in line on the compute stream, also without waiting for the GPU.

On the CPU (tests) the copies are clones on the same device: the mechanism runs unchanged, and the
masters can be told from the copies by their storage.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any

from onetrainer.model.blocks import find_blocks
from onetrainer.util.errors import UserError

if TYPE_CHECKING:
    import torch

    from onetrainer.util.family import Component


def offload_blocks(
    module: torch.nn.Module, component: Component, amount: int | float
) -> list[tuple[str, torch.nn.Module]]:
    """The blocks to offload: the first `amount` (a count, or a fraction of them when a float)."""
    blocks = find_blocks(module, component.blocks)
    if not blocks:
        raise UserError(f"the {component.title} has no blocks to offload", where=f"parts.{component.name}")
    count = round(amount * len(blocks)) if isinstance(amount, float) else int(amount)
    if count > len(blocks):
        raise UserError(
            f"parts.{component.name}.offload_blocks asks for {count} blocks, but the {component.title} has "
            f"{len(blocks)}",
            where=f"parts.{component.name}.offload_blocks",
            hint=f"Use at most {len(blocks)}, or a fraction such as 0.5.",
        )
    return blocks[:count]


def _onload_function() -> Any:
    import torch

    class Onload(torch.autograd.Function):
        """The device copy of a trained master: its gradient goes back to the master's device and dtype."""

        @staticmethod
        def forward(ctx: Any, master: torch.Tensor, copy: torch.Tensor) -> torch.Tensor:
            ctx.device, ctx.dtype = master.device, master.dtype
            return copy

        @staticmethod
        def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
            return grad.to(ctx.device, ctx.dtype), None

    return Onload


Run = tuple[int | None, int, bool]
"""One run of an offloaded block: (the block run before it, the block, whether gradients were on). Gradients
tell a no-grad pass (prior-preservation samples, previews) from the training pass between the same blocks."""


@dataclass
class _Entry:
    owner: torch.nn.Module
    key: str
    master: torch.nn.Parameter
    trained: bool


@dataclass
class _Block:
    index: int
    path: str
    entries: list[_Entry]
    copies: list[torch.Tensor] | None = None
    ready: Any = None
    """The CUDA event after which `copies` may be read (None on the CPU or when copied in line)."""
    copied_from: list[tuple[int, int]] = field(default_factory=list)
    """(version, data pointer) of each trained master when `copies` were taken: an update since makes them stale."""

    def stale(self) -> bool:
        """Whether a trained master changed since the copies were taken (an optimizer step in between)."""
        return self.copied_from != _versions(self.entries)


@dataclass
class BlockOffloader:
    """Offloads `blocks` of `module` (see the module docstring); built by `placement.apply_placement`."""

    module: torch.nn.Module
    blocks: Sequence[tuple[str, torch.nn.Module]]
    device: torch.device
    offload_trained: bool = False
    """Offload trained weights too (a fully trained part); otherwise they stay on the device."""
    pin_memory: bool | None = None
    """Pin the masters (default: when the device is a GPU)."""
    successors: dict[Run, int] = field(default_factory=dict)
    """A block's run -> the block that ran next, as seen so far."""
    _units: list[_Block] = field(default_factory=list)
    _last_run: Run | None = None
    _ahead: _Block | None = None
    _installed: set[int] = field(default_factory=set)
    _stream: Any = None

    def __post_init__(self) -> None:
        import torch

        cuda = self.device.type == "cuda"
        pin = cuda if self.pin_memory is None else self.pin_memory
        self._stream = torch.cuda.Stream(self.device) if cuda else None
        self._onload = _onload_function()
        offloaded: set[int] = set()
        for index, (path, block) in enumerate(self.blocks):
            found = []
            for owner in block.modules():
                for key, param in list(owner._parameters.items()):
                    if param is None or id(param) in offloaded or (param.requires_grad and not self.offload_trained):
                        continue
                    found.append((owner, key, param))
                    offloaded.add(id(param))
            params = [param for _, _, param in found]
            entries = []
            for (owner, key, param), master in zip(found, _pinned(params) if pin else params, strict=True):
                owner._parameters[key] = master
                offloaded.add(id(master))
                entries.append(_Entry(owner, key, master, param.requires_grad))
            unit = _Block(index, path, entries)
            self._units.append(unit)
            # The hooks swap tensors and move data: they run eagerly, outside a compiled block's graph.
            block.register_forward_pre_hook(torch.compiler.disable(partial(self._before, unit)))
            block.register_forward_hook(torch.compiler.disable(partial(self._after, unit)))
        self._place_resident(offloaded)

    def _place_resident(self, offloaded: set[int]) -> None:
        """Move every tensor of the module that is not an offloaded master to the device."""
        import torch

        for owner in self.module.modules():
            for key, param in list(owner._parameters.items()):
                if param is None or id(param) in offloaded or param.device == self.device:
                    continue
                if type(param) is torch.nn.Parameter:
                    param.data = param.data.to(self.device)
                else:
                    owner._parameters[key] = torch.nn.Parameter(param.to(self.device), requires_grad=False)
            for key, buffer in list(owner._buffers.items()):
                if buffer is not None and buffer.device != self.device:
                    owner._buffers[key] = buffer.to(self.device)

    def holds(self, param: torch.Tensor) -> bool:
        """Whether `param` is one of the offloaded masters."""
        return any(entry.master is param for unit in self._units for entry in unit.entries)

    def masters(self, index: int) -> list[torch.nn.Parameter]:
        """The masters of block `index` (what its modules hold between uses)."""
        return [entry.master for entry in self._units[index].entries]

    def forward_context(self) -> Any:
        """Wrap the component's forward pass in this: checkpoint recomputations then run every block to its end."""
        from torch.utils.checkpoint import set_checkpoint_early_stop

        return set_checkpoint_early_stop(False)

    def settle(self) -> None:
        """Put the masters back wherever copies are still in place (a recomputation stopped early)."""
        for index in list(self._installed):
            self._restore(self._units[index])

    # ----------------------------------------------------------------------------------- hooks
    def _before(self, unit: _Block, _: torch.nn.Module, args: Any) -> None:
        import torch

        self.settle()
        if _faking():
            self._install(unit, self._device_copies(unit, non_blocking=False))
            return
        if self._last_run is not None:
            self.successors[self._last_run] = unit.index
        if self._ahead is not None and self._ahead is not unit:
            self._ahead.copies, self._ahead.ready = None, None  # taken for a block that did not run next
        self._ahead = None
        if unit.copies is not None and unit.stale():
            unit.copies, unit.ready = None, None
        if unit.copies is None:
            self._copy_in(unit, ahead=False)
        if unit.ready is not None:
            torch.cuda.current_stream(self.device).wait_event(unit.ready)
        copies, unit.copies, unit.ready = unit.copies or [], None, None
        self._install(unit, copies)
        previous = self._last_run[1] if self._last_run is not None else None
        self._last_run = (previous, unit.index, torch.is_grad_enabled())
        following = self.successors.get(self._last_run)
        if following is not None and self._units[following].copies is None:
            self._ahead = self._units[following]
            self._copy_in(self._ahead, ahead=True)

    def _install(self, unit: _Block, copies: list[torch.Tensor]) -> None:
        for entry, copy in zip(unit.entries, copies, strict=True):
            onloaded: Any = self._onload.apply(entry.master, copy) if entry.trained else copy
            entry.owner._parameters[entry.key] = onloaded  # a tensor in a parameter's place, for this block's run
        self._installed.add(unit.index)

    def _after(self, unit: _Block, _: torch.nn.Module, args: Any, output: Any) -> None:
        self._restore(unit)

    def _restore(self, unit: _Block) -> None:
        for entry in unit.entries:
            entry.owner._parameters[entry.key] = entry.master
        self._installed.discard(unit.index)

    def _device_copies(self, unit: _Block, *, non_blocking: bool) -> list[torch.Tensor]:
        return [_copy(entry.master, self.device, non_blocking=non_blocking) for entry in unit.entries]

    def _copy_in(self, unit: _Block, *, ahead: bool) -> None:
        import torch

        unit.copied_from = _versions(unit.entries)
        if self._stream is None or not ahead:
            # On the compute stream, ordered before the block's kernels: no wait for the GPU. A trained master
            # is rewritten only after its gradient's copy to the CPU, which blocks until this stream is done.
            unit.copies = self._device_copies(unit, non_blocking=True)
            return
        self._stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(self._stream):
            unit.copies = self._device_copies(unit, non_blocking=True)
            unit.ready = torch.cuda.Event()
            unit.ready.record(self._stream)


def _faking() -> bool:
    """Whether a fake-tensor pass runs (the trainer's FLOP count): it learns nothing and copies nothing ahead,
    as its copies are fake tensors that no real pass may use."""
    import torch

    return torch._C._get_dispatch_mode(torch._C._TorchDispatchModeKey.FAKE) is not None


def _versions(entries: list[_Entry]) -> list[tuple[int, int]]:
    return [(entry.master._version, entry.master.data_ptr()) for entry in entries if entry.trained]


def _copy(master: torch.Tensor, device: torch.device, *, non_blocking: bool) -> torch.Tensor:
    """A device copy of a master that autograd and the layer can use (a fresh tensor, never the master)."""
    import torch

    tensor = master.detach() if type(master) is torch.nn.Parameter else master
    copied = tensor.to(device, non_blocking=non_blocking, copy=True)
    if type(master) is torch.nn.Parameter:
        return copied
    return torch.nn.Parameter(copied, requires_grad=False)


def _pinned(params: list[torch.nn.Parameter]) -> list[torch.nn.Parameter]:
    """`params` with their data in pinned memory, one block's together (`util.pinned`), so that their copies
    to the GPU overlap with compute.

    A plain weight is pinned in place (the optimizer may hold it). A quantised one held in a wrapper tensor
    subclass (torchao's fp8 and int8) is frozen, and is rebuilt around pinned copies of its inner tensors
    (its values and scales): a wrapper has no data of its own to pin.
    """
    import torch
    from torch.utils._python_dispatch import is_traceable_wrapper_subclass, transform_subclass

    from onetrainer.util.pinned import pinned_copies

    bases = [param.detach() if is_traceable_wrapper_subclass(param) else param for param in params]
    leaves = [leaf for base in bases for leaf in _leaves(base) if leaf.device.type == "cpu" and not leaf.is_pinned()]
    copies = dict(zip(map(id, leaves), pinned_copies(leaves), strict=True))

    def swapped(tensor: torch.Tensor) -> torch.Tensor:
        if is_traceable_wrapper_subclass(tensor):
            return transform_subclass(tensor, lambda _, inner: swapped(inner))
        return copies.get(id(tensor), tensor)

    pinned = []
    for param, base in zip(params, bases, strict=True):
        if not any(id(leaf) in copies for leaf in _leaves(base)):
            pinned.append(param)
        elif base is not param:
            pinned.append(torch.nn.Parameter(swapped(base), requires_grad=False))
        else:
            param.data = copies[id(param)]
            pinned.append(param)
    return pinned


def _leaves(tensor: torch.Tensor) -> list[torch.Tensor]:
    """The plain tensors holding `tensor`'s data: itself, or a wrapper subclass's inner tensors."""
    from torch.utils._python_dispatch import is_traceable_wrapper_subclass

    if not is_traceable_wrapper_subclass(tensor):
        return [tensor]
    names, _ = tensor.__tensor_flatten__()
    return [leaf for name in names for leaf in _leaves(getattr(tensor, name))]


def activations_in_cpu_memory(pin_memory: bool) -> Any:
    """Saved tensors of the autograd graph kept in CPU memory until the backward pass needs them (activation
    offloading), as `torch.autograd.graph.save_on_cpu` keeps them, but never waiting for the GPU.

    torch's own copies a saved tensor into pinned memory with a blocking copy before torch 2.13: one wait per
    saved tensor. Here both copies are queued on the current stream (autograd runs a backward operation on
    its forward operation's stream), so the copy back in is ordered after the copy out, and the GPU memory
    freed meanwhile is reused only by later work on that stream.
    """
    import torch

    def pack(tensor: torch.Tensor) -> tuple[torch.device, torch.Tensor]:
        if not pin_memory or tensor.is_sparse:
            return tensor.device, tensor.cpu()
        packed = torch.empty(tensor.size(), dtype=tensor.dtype, layout=tensor.layout, pin_memory=True)
        packed.copy_(tensor, non_blocking=True)
        return tensor.device, packed

    def unpack(packed: tuple[torch.device, torch.Tensor]) -> torch.Tensor:
        device, tensor = packed
        return tensor.to(device, non_blocking=pin_memory)

    return torch.autograd.graph.saved_tensors_hooks(pack, unpack)
