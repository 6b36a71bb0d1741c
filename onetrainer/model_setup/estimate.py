"""Peak GPU memory of a run's settings, estimated before anything loads (`train --dry-run`).

The estimate adds up, each as a line of the report:

- **Weights on the GPU**, per component and storage: parameter counts of the architecture's modules
  built on the meta device from its configs (the folder's own for a local diffusers folder or tiny
  model, else the family's shipped config: a hub id or a single file is not read), linear layers at
  their quantised size (`util.dtypes.BITS_PER_WEIGHT`, row scales included), the rest in the dtype the
  placement policy gives them. Text encoders and the VAE count only when they run during the steps
  (they train, or `data.cache` is off); otherwise they fill the cache and wait in CPU memory.
  Offloaded denoiser blocks count as the two largest in flight.
- **Trained tensors, gradients, optimizer state**: adapters injected by peft into the meta modules
  (exact counts), or the fully trained parts; gradients in the weights' dtype (with fused backward
  only the largest tensor's); the optimizer's state per element (`state_bytes`; Adafactor's factored
  moments and the 8-bit optimizers' small-tensor fallback by shape). Offloaded optimizer states and
  the blocks' masters are listed as CPU memory instead. A sharded run (`training.distributed: fsdp`,
  `--gpus N`) divides the fully trained parts' three by N and adds the two largest gathered blocks.
- **The moving average** (`training.ema`): fp32, on the GPU beside the weights it averages or in CPU memory.
- **Activations** at the run's largest resolution and its batch size: the peak of one forward and
  backward pass simulated on the meta device (`activations`), with checkpointing, autocast and
  activation offloading as configured; the activations' gradients in flight and the copies that
  autocast and fp8/int8 layers make of their weights included.
- **The optimizer step's temporaries**, where the step updates every tensor at once with torch's foreach
  kernels (`_steps_all_at_once`): a copy the size of the trained tensors, counted where it exceeds the
  activations' peak, which is freed by the time the optimizer steps.
- **Runtime overhead**: the CUDA context, library workspaces and allocator slack, a typical
  `RUNTIME_OVERHEAD`.

Not counted: the text encoders' activations while they train (77 tokens: small next to the
denoiser's), previews (the sampler runs between steps, without gradients; a schedule-free optimizer's
training weights, kept aside on the device meanwhile, take the place of the gradients, freed by then: it
cannot run with the fused backward pass, which holds none), the temporaries of a step
one tensor at a time (one tensor's worth). The gradients of a full fine-tune are added to the activations'
peak, though they peak later in the step: the estimate is high there, and near on LoRA
(tests/model_setup/test_estimate.py compares it with real steps of the tiny models). It is an estimate for
choosing settings; the GPU benchmark (`benchmarks/gpu`) measures the real peaks of the shipped memory presets.
"""

from __future__ import annotations

import importlib
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from onetrainer.model_setup.placement import placement_policy
from onetrainer.util.config.training import DistributedMode, Optimizer, TrainingConfig
from onetrainer.util.config.types import TINY_PREFIX
from onetrainer.util.dtypes import BITS_PER_WEIGHT, ROW_SCALE_BYTES, torch_dtype
from onetrainer.util.enums import PredictionType, TrainingMethod
from onetrainer.util.errors import UserError
from onetrainer.util.family import FamilySpec, get_family

if TYPE_CHECKING:
    import torch

    from onetrainer.model.diffusion import DiffusionModel
    from onetrainer.model_setup.activations import WeightUses
    from onetrainer.model_setup.placement import Placement
    from onetrainer.util.config.schema import TrainConfig

GIB = 2**30
RUNTIME_OVERHEAD = int(0.6 * GIB)
"""CUDA context, cuBLAS/cuDNN workspaces and allocator slack of a typical training process."""
SMALL_TENSOR = 4096
"""8-bit optimizers keep tensors smaller than this in fp32 (bitsandbytes' and torchao's default)."""


@dataclass(frozen=True)
class MemoryLine:
    kind: str
    """weights, trained, gradients, optimizer, average, activations or overhead."""
    what: str
    bytes: int


@dataclass
class MemoryEstimate:
    architecture: str
    resolution: int
    batch_size: int
    gpu: list[MemoryLine] = field(default_factory=list)
    cpu: list[MemoryLine] = field(default_factory=list)
    """What waits in CPU memory instead (offloaded blocks, offloaded optimizer state, saved activations)."""
    notes: list[str] = field(default_factory=list)
    gpu_total: int | None = None
    """The training GPU's memory, when the estimate is made on the machine that trains (`compare_with`)."""
    fitting_presets: list[str] = field(default_factory=list)
    """The memory presets of the model type made for a GPU this size, when the estimate exceeds it."""

    @property
    def peak(self) -> int:
        return sum(line.bytes for line in self.gpu)

    @property
    def fits(self) -> bool | None:
        """Whether the peak fits the training GPU (None when it is not known)."""
        return None if self.gpu_total is None else self.peak <= self.gpu_total

    def compare_with(self, gpu_total: int | None, model_type: str) -> None:
        """Set the training GPU's memory; when the peak exceeds it, find the model type's memory presets made for
        a GPU this size, the largest first. Their names end in the size a card is sold as (`-24gb`: 24 * 10**9
        bytes or more; a 24 GB card has about 23.6 GiB)."""
        from onetrainer.util.config.presets import memory_budget, memory_presets_for

        self.gpu_total = gpu_total
        if self.fits is False and gpu_total is not None:
            largest_first = reversed(memory_presets_for(model_type))
            self.fitting_presets = [name for name in largest_first if (memory_budget(name) or 0) * 10**9 <= gpu_total]

    def to_dict(self) -> dict[str, Any]:
        return {
            "peak_bytes": self.peak,
            "peak_gib": round(self.peak / GIB, 2),
            "gpu_total_bytes": self.gpu_total,
            "fits": self.fits,
            "fitting_presets": list(self.fitting_presets),
            "architecture": self.architecture,
            "resolution": self.resolution,
            "batch_size": self.batch_size,
            "gpu": [{"kind": line.kind, "what": line.what, "bytes": line.bytes} for line in self.gpu],
            "cpu": [{"kind": line.kind, "what": line.what, "bytes": line.bytes} for line in self.cpu],
            "notes": list(self.notes),
        }


def estimate_memory(config: TrainConfig, *, world_size: int = 1) -> MemoryEstimate:
    """The peak memory of one GPU training `config` on `world_size` ranks, from shapes alone (see the module
    docstring)."""
    import torch

    spec = get_family(config.model.type)
    model, architecture = meta_model(config, spec)
    from onetrainer.model_setup.diffusion import DiffusionSetup
    from onetrainer.util.registry import ModuleKind, lookup

    setup = lookup(ModuleKind.SETUP, spec.name)(model, config)
    if not isinstance(setup, DiffusionSetup):  # the estimate reads the shared setup's adapters and hooks
        raise UserError(f"the {spec.title} training setup does not say how its memory use is estimated")
    resolution = _largest(config.data.resolution)
    estimate = MemoryEstimate(architecture, resolution, config.training.batch_size)
    full = setup.trained_parts() if config.method is TrainingMethod.FULL else []
    policy = placement_policy(model, config, torch.device("meta"), torch_dtype(config.model.dtype), full_parts=full)
    trained = _trained(setup, model, config, full, policy)
    resident = _resident(config, spec, setup)
    offloaded: dict[str, set[int]] = {}
    for name, module in model.modules():
        if name not in resident:
            estimate.notes.append(f"{name}: fills the cache, then waits in CPU memory")
            continue
        offloaded[name] = _offloaded(module, spec, policy[name], full_trained=name in full)
        kept = [param for param in module.parameters() if id(param) not in offloaded[name] and id(param) not in trained]
        weights = sum(_weight_bytes(module, param, policy[name]) for param in kept)
        if not kept and not offloaded[name]:
            continue  # every weight trains: counted below
        label = f"{name} weights ({policy[name].storage})"
        if offloaded[name]:
            moving = [p for p in module.parameters() if id(p) in offloaded[name] and id(p) not in trained]
            away = sum(_weight_bytes(module, param, policy[name]) for param in moving)
            in_flight = _largest_blocks(module, spec, policy[name], offloaded[name])
            estimate.cpu.append(MemoryLine("weights", f"{name} offloaded blocks", away))
            weights += in_flight
            label += ", two offloaded blocks in flight"
        estimate.gpu.append(MemoryLine("weights", label, weights))
    temporaries = _add_training_state(estimate, config, trained, offloaded)
    _add_average(estimate, config, trained, offloaded)
    if world_size > 1 and config.training.distributed is DistributedMode.FSDP and full:
        _shard_lines(estimate, model, full, policy, world_size)
        temporaries //= world_size
    name = spec.denoiser.name
    _add_activations(estimate, config, setup, model, resolution, policy[name], trained, offloaded.get(name, set()))
    activations = sum(line.bytes for line in estimate.gpu if line.kind == "activations")
    if temporaries > activations:
        what = "optimizer step's temporaries (foreach), beyond the activations freed by then"
        estimate.gpu.append(MemoryLine("optimizer", what, temporaries - activations))
    estimate.gpu.append(MemoryLine("overhead", "CUDA context, workspaces, allocator slack (typical)", RUNTIME_OVERHEAD))
    return estimate


def _largest(resolution: int | list[int]) -> int:
    return max(resolution) if isinstance(resolution, list) else int(resolution)


def meta_model(config: TrainConfig, spec: FamilySpec) -> tuple[DiffusionModel, str]:
    """The architecture's components built on the meta device, as a model (no weights, no tokenizers), less
    those the model's options leave out."""
    import torch

    from onetrainer.model.diffusion import DiffusionModel
    from onetrainer.model_loader.architecture import resolve_architecture

    source = config.model.config or config.model.base
    local = source is not None and (str(source).startswith(TINY_PREFIX) or Path(str(source)).is_dir())
    prediction = None if config.model.prediction_type is PredictionType.AUTO else config.model.prediction_type.value
    architecture = resolve_architecture(str(source) if local else None, spec, prediction)
    left_out = spec.left_out(config.model.options)
    components: dict[str, Any] = {}
    for component in spec.components:
        if component.name not in architecture.classes or component.name in left_out:
            continue
        library, class_name = architecture.classes[component.name]
        cls = getattr(importlib.import_module(library), class_name)
        settings = architecture.configs[component.name]
        with torch.device("meta"):
            if library == "diffusers":
                module = cls.from_config(settings)
            else:
                module = cls._from_config(cls.config_class.from_dict(settings))
        module.requires_grad_(False)
        components[component.name] = module
    model = DiffusionModel(
        spec=spec,
        components=components,
        tokenizers={},
        noise_scheduler=None,
        source=str(source),
        options=dict(config.model.options),
    )
    return model, architecture.name


def _trained(
    setup: Any, model: DiffusionModel, config: TrainConfig, full: list[str], policy: dict[str, Placement]
) -> dict[int, tuple[Any, torch.dtype]]:
    """id -> (trained tensor, its dtype): the injected adapter's (fp32), or the fully trained parts' weights (in
    their part's dtype)."""
    import torch

    trained: dict[int, tuple[Any, torch.dtype]] = {}
    if config.method is TrainingMethod.LORA and setup.trained_parts():
        adapter = setup.inject_lora_adapter()
        for name in adapter.components:
            for param in adapter.parameters(model, name):
                param.requires_grad_(True)
                trained[id(param)] = (param, torch.float32)
    for name in full:
        for param in model.components[name].parameters():
            param.requires_grad_(True)
            trained[id(param)] = (param, policy[name].storage_dtype)
    return trained


def _resident(config: TrainConfig, spec: FamilySpec, setup: Any) -> set[str]:
    """Components on the GPU during the steps: the denoiser; the text encoders, all of them, when the text is
    not cached (no cache, or one of them or an embedding on one trains); the VAE without the cache."""
    trains = set(setup.trained_parts())
    embedding = config.method is TrainingMethod.EMBEDDING or any(e.train for e in config.embedding.additional)
    encoders = spec.text_encoders
    text_trains = any(c.name in trains or (embedding and c.embedding_key) for c in encoders)
    resident = {spec.denoiser.name}
    if not config.data.cache or text_trains:
        resident.update(component.name for component in encoders)
    if not config.data.cache:
        resident.add(spec.vae.name)
    return resident


def _weight_bytes(module: torch.nn.Module, param: Any, placement: Placement) -> int:
    """What a weight occupies stored as the placement says (quantised if it is a linear layer's weight)."""
    import torch

    if placement.quantised is not None and param.dim() == 2 and _is_linear_weight(module, param):
        bits = BITS_PER_WEIGHT[placement.quantised]
        return math.ceil(param.numel() * bits / 8) + ROW_SCALE_BYTES.get(placement.quantised, 0) * param.shape[0]
    dtype = placement.storage_dtype if param.is_floating_point() else param.dtype
    return param.numel() * torch.empty((), dtype=dtype).element_size()


def _is_linear_weight(module: torch.nn.Module, param: Any) -> bool:
    import torch

    linears = getattr(module, "_linear_weights", None)
    if linears is None:
        linears = {id(child.weight) for child in module.modules() if type(child) is torch.nn.Linear}
        module._linear_weights = linears  # type: ignore[assignment]
    return id(param) in linears


def _offloaded(module: torch.nn.Module, spec: FamilySpec, placement: Placement, *, full_trained: bool) -> set[int]:
    """ids of the weights layer offloading keeps in CPU memory (as `model_setup.offload` chooses them)."""
    if not placement.offload_blocks:
        return set()
    from onetrainer.model_setup.offload import offload_blocks

    blocks = offload_blocks(module, spec.component(spec.denoiser.name), placement.offload_blocks)
    return {id(param) for _, block in blocks for param in block.parameters() if full_trained or not param.requires_grad}


def _largest_blocks(module: torch.nn.Module, spec: FamilySpec, placement: Placement, offloaded: set[int]) -> int:
    from onetrainer.model_setup.offload import offload_blocks

    sizes = sorted(
        (
            sum(_weight_bytes(module, param, placement) for param in block.parameters() if id(param) in offloaded)
            for _, block in offload_blocks(module, spec.component(spec.denoiser.name), placement.offload_blocks)
        ),
        reverse=True,
    )
    return sum(sizes[:2])


def _shard_lines(
    estimate: MemoryEstimate, model: DiffusionModel, full: list[str], policy: dict[str, Placement], world_size: int
) -> None:
    """FSDP: each rank holds 1/N of the fully trained weights, their gradients and optimizer state, and
    gathers the blocks of a sharded part (its top-level module lists' entries, `trainer.sharding.shard_units`)
    one at a time: two of them in flight."""
    from onetrainer.model.blocks import find_blocks

    estimate.gpu = [
        MemoryLine(line.kind, f"{line.what}, 1/{world_size} per GPU (FSDP)", math.ceil(line.bytes / world_size))
        if line.kind in ("trained", "gradients", "optimizer", "average")
        else line
        for line in estimate.gpu
    ]
    for name in full:
        module = model.components[name]
        sizes = sorted(
            (
                sum(_weight_bytes(module, param, policy[name]) for param in unit.parameters())
                for _, unit in find_blocks(module)
            ),
            reverse=True,
        )
        estimate.gpu.append(MemoryLine("weights", f"{name}: two gathered blocks (FSDP)", sum(sizes[:2])))


def state_bytes(optimizer: Optimizer, shape: tuple[int, ...], momentum: float = 0.0) -> int:
    """Bytes of optimizer state one trained tensor of this shape carries (fp32 states)."""
    count = math.prod(shape)
    if optimizer is Optimizer.ADAFACTOR or optimizer is Optimizer.CAME:
        factored = 4 * (count // shape[-1] + count // shape[-2]) if len(shape) >= 2 else 4 * count
        return factored * (2 if optimizer is Optimizer.CAME else 1) + (4 * count if optimizer is Optimizer.CAME else 0)
    if optimizer in (Optimizer.ADAMW_8BIT, Optimizer.ADAMW_8BIT_AO):
        return 2 * count if count >= SMALL_TENSOR else 8 * count
    per_element = {Optimizer.SGD: 4 if momentum else 0, Optimizer.LION: 4, Optimizer.PRODIGY: 16}
    return per_element.get(optimizer, 8) * count


def _add_training_state(
    estimate: MemoryEstimate,
    config: TrainConfig,
    trained: dict[int, tuple[Any, torch.dtype]],
    offloaded: dict[str, set[int]],
) -> int:
    """Add the trained tensors, gradients and optimizer state; returns the bytes of the temporaries the
    optimizer's step makes (`_steps_all_at_once`), which live after the activations are freed."""
    training = config.training
    on_cpu = set().union(*offloaded.values()) if offloaded else set()
    gpu = [entry for key, entry in trained.items() if key not in on_cpu]
    cpu = [entry for key, entry in trained.items() if key in on_cpu]

    def size(entries: list[tuple[Any, torch.dtype]]) -> int:
        return sum(param.numel() * dtype.itemsize for param, dtype in entries)

    def states(entries: list[tuple[Any, torch.dtype]]) -> int:
        return sum(state_bytes(training.optimizer, tuple(param.shape), training.momentum) for param, _ in entries)

    count = sum(param.numel() for param, _ in trained.values())
    estimate.gpu.append(MemoryLine("trained", f"trained weights ({count / 1e6:.1f} M)", size(gpu)))
    if cpu:
        estimate.cpu.append(MemoryLine("trained", "trained weights of offloaded blocks", size(cpu)))
    if training.fused_backward:
        largest = max((param.numel() * dtype.itemsize for param, dtype in gpu), default=0)
        estimate.gpu.append(MemoryLine("gradients", "gradients (fused backward: one tensor at a time)", largest))
    else:
        estimate.gpu.append(MemoryLine("gradients", "gradients", size(gpu)))
    label = f"optimizer state ({training.optimizer.value})"
    if training.optimizer_offload:
        estimate.cpu.append(MemoryLine("optimizer", label, states(gpu) + states(cpu)))
        return 0
    estimate.gpu.append(MemoryLine("optimizer", label, states(gpu)))
    if cpu:
        estimate.cpu.append(MemoryLine("optimizer", f"{label} of offloaded blocks", states(cpu)))
    return size(gpu) if _steps_all_at_once(training, mixed_devices=bool(cpu)) else 0


def _add_average(
    estimate: MemoryEstimate,
    config: TrainConfig,
    trained: dict[int, tuple[Any, torch.dtype]],
    offloaded: dict[str, set[int]],
) -> None:
    """The moving average (`training.ema`): an fp32 copy of each trained tensor (`trainer.ema.average_dtype`),
    beside the weight (`device: train`, CPU memory for offloaded blocks) or all in CPU memory (`device: cpu`)."""
    from onetrainer.util.config.training import EmaDevice

    ema = config.training.ema
    if not ema.enabled:
        return
    on_cpu = set().union(*offloaded.values()) if offloaded else set()
    sizes = {key: param.numel() * 4 for key, (param, _) in trained.items()}
    gpu = 0 if ema.device is EmaDevice.CPU else sum(size for key, size in sizes.items() if key not in on_cpu)
    if gpu:
        estimate.gpu.append(MemoryLine("average", "moving average of the trained weights (fp32)", gpu))
    if sum(sizes.values()) - gpu:
        estimate.cpu.append(MemoryLine("average", "moving average (fp32)", sum(sizes.values()) - gpu))


def _steps_all_at_once(training: TrainingConfig, *, mixed_devices: bool) -> bool:
    """Whether the optimizer's step on CUDA makes a temporary the size of all its trained tensors: torch's
    foreach AdamW (the square root of its second moments) and SGD with momentum and weight decay or Nesterov
    (the decayed gradients), and schedule-free AdamW (its foreach denominator). Not a fused kernel, nor a step
    one tensor at a time (the fused backward pass, stochastic rounding, optimizer offloading, a loop over
    tensors where some are in CPU memory or `foreach: false`), whose temporaries are one tensor's.
    """
    args = training.optimizer_args
    if training.fused_backward or training.stochastic_rounding or args.get("foreach") is False or mixed_devices:
        return False
    if training.optimizer is Optimizer.SCHEDULE_FREE_ADAMW:
        return True
    if training.optimizer is Optimizer.ADAMW:
        return args.get("fused") is False or args.get("foreach") is True
    if training.optimizer is Optimizer.SGD:
        momentum = training.momentum > 0
        decayed = training.weight_decay > 0 or bool(args.get("nesterov"))
        fused = args.get("fused") is True or (not momentum and "fused" not in args and "foreach" not in args)
        return not fused and decayed
    return False


def _add_activations(
    estimate: MemoryEstimate,
    config: TrainConfig,
    setup: Any,
    model: DiffusionModel,
    resolution: int,
    placement: Placement,
    trained: dict[int, tuple[Any, torch.dtype]],
    offloaded: set[int],
) -> None:
    import torch

    from onetrainer.model_setup.activations import measure_activations
    from onetrainer.model_setup.placement import place

    example = getattr(setup.hooks, "example_inputs", None)
    if example is None:
        estimate.notes.append(f"activations: {model.spec.title} has no example inputs, so they are not estimated")
        return
    training = config.training
    dtype = torch.float32 if training.precision.value == "fp32" else torch_dtype(training.precision)
    denoiser = model.denoiser
    adapters = config.method is TrainingMethod.LORA
    weights = _weight_uses(denoiser, placement, trained, dtype, adapters=adapters, offloaded=offloaded)
    place(denoiser, "meta", dtype)
    if adapters:
        for param, _ in trained.values():
            param.data = param.data.float()  # the adapters' fp32 weights: their inputs are cast, as in training
    vae = model.components[model.spec.vae.name].config
    factor = 2 ** (len(vae["block_out_channels"]) - 1)
    side = resolution // factor
    batch = training.batch_size
    conditioning, extras = example(model, batch, resolution, resolution, "meta")
    conditioning = {key: value.to(dtype) for key, value in conditioning.items()}
    trains = set(setup.trained_parts())
    embedding = config.method is TrainingMethod.EMBEDDING or any(e.train for e in config.embedding.additional)
    if embedding or any(name in trains for name in model.text_encoder_names()):
        for value in conditioning.values():
            value.requires_grad_(True)
    noisy = torch.zeros(batch, model.spec.latent_channels, side, side, device="meta", dtype=dtype)
    timesteps = torch.zeros(batch, device="meta")
    inputs = [noisy, timesteps, *conditioning.values(), *(v for v in extras.values() if isinstance(v, torch.Tensor))]
    measured = measure_activations(
        denoiser,
        lambda: setup.hooks.denoise(model, noisy, timesteps, conditioning, extras),
        checkpointing=training.gradient_checkpointing,
        weights=weights,
        inputs=inputs,
        compute_dtype=None if dtype == torch.float32 else dtype,
        offload=training.activation_offload,
    )
    checkpoints = "with" if training.gradient_checkpointing else "without"
    where = f"{resolution} px, batch {batch}, {checkpoints} checkpointing"
    if training.activation_offload:
        estimate.cpu.append(MemoryLine("activations", f"saved activations ({where})", measured.offloaded))
        where += ", saved ones offloaded"
    estimate.gpu.append(MemoryLine("activations", f"activations ({where})", measured.peak))


def _weight_uses(
    denoiser: torch.nn.Module,
    placement: Placement,
    trained: dict[int, tuple[Any, torch.dtype]],
    compute: torch.dtype,
    *,
    adapters: bool,
    offloaded: set[int],
) -> WeightUses:
    """How training uses each of the denoiser's weights (`activations.WeightUses`), from its storage: a weight in
    the compute dtype is used as stored; autocast casts any other at each use, or once a forward pass for a fully
    trained one that is not offloaded (autocast caches the casts of leaf tensors, and an offloaded block computes
    with copies); a quantised layer dequantises its weight at each use (fp8, int8) or in each pass (nf4). The
    adapters keep their fp32 weights in the pass, whose layers cast them as autocast does."""
    from onetrainer.model_setup.activations import WeightUses

    uses = WeightUses()
    for param in denoiser.parameters():
        if id(param) in trained:
            if adapters or trained[id(param)][1] == compute:
                uses.as_stored.append(param)
            elif id(param) in offloaded:
                uses.per_use.append(param)
        elif placement.quantised is not None and param.dim() == 2 and _is_linear_weight(denoiser, param):
            (uses.as_stored if placement.quantised == "nf4" else uses.per_use).append(param)
        elif placement.storage_dtype == compute:
            uses.as_stored.append(param)
        else:
            uses.per_use.append(param)
    return uses
