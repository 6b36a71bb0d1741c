"""The memory-preset cases of the GPU benchmark: each family's memory presets, trained as onetrainer trains them.

"Ours" takes a shipped memory preset's settings (weight dtypes, offloading, optimizer, fused backward,
stochastic rounding, checkpointing, resolution and batch) and trains the real-size denoiser (random
weights) through the setup and the trainer's own optimizer builder and step strategy. The LoRA
targets the attention projections at rank 16, as the diffusers side does, so both train the same
parameters. The reference is diffusers' bare example loop at bf16 on the same case (LoRA on a bf16
base, or a full fine-tune with fp32 weights and AdamW): what the preset's memory levers are measured
against.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from benchmarks.gpu.architectures import Family

if TYPE_CHECKING:
    from benchmarks.gpu.steps import Case, Step

FAMILY_PRESETS = {"SD1.5": "sd15", "SDXL": "sdxl", "FLUX.1-dev": "flux-dev"}
"""Benchmark family -> the model type whose memory presets it runs."""


def memory_presets(family: str) -> list[str]:
    """The shipped memory presets of a benchmark family's model type, by budget."""
    from onetrainer.util.config.presets import load_preset, memory_budget, memory_presets

    model_type = FAMILY_PRESETS[family]
    names = [name for name in memory_presets() if load_preset(name)["model"]["type"] == model_type]
    return sorted(names, key=lambda name: (memory_budget(name) or 0, name))


def preset_settings(preset: str) -> dict[str, Any]:
    """What the benchmark's `Case` takes from a preset: method, checkpointing, resolution, batch."""
    config = preset_config(preset, "cpu")
    resolution = config.data.resolution
    return {
        "method": config.method.value,
        "checkpointing": config.training.gradient_checkpointing,
        "resolution": max(resolution) if isinstance(resolution, list) else resolution,
        "batch": config.training.batch_size,
    }


def preset_config(preset: str, device: Any) -> Any:
    from onetrainer.util.config.loader import load_config
    from onetrainer.util.config.presets import presets_dir

    overrides = [f"training.device={device}", "lora.targets=attn", "lora.rank=16", "lora.alpha=16"]
    return load_config(presets_dir() / f"{preset}.yaml", overrides, check_paths=False)


def preset_step(family: Family, case: Case, device: Any) -> tuple[Step, int]:
    """One step of `case.preset`'s settings through the setup, the optimizer builder and the step strategy."""
    import torch

    from benchmarks.gpu.steps import make_batch, onetrainer_model
    from onetrainer.trainer.optimizers import build_optimizer, resolve_parameter_groups
    from onetrainer.trainer.precision import MixedPrecision
    from onetrainer.trainer.step import build_step
    from onetrainer.trainer.updates import offload_to_cpu
    from onetrainer.util.dtypes import torch_dtype
    from onetrainer.util.registry import ModuleKind, lookup

    assert case.preset is not None
    config = preset_config(case.preset, device)
    target = torch.device(device)
    # Built in CPU memory, as the loader leaves it; FLUX.1's 12 B bf16 weights on the device instead (its
    # random initialisation takes minutes on the CPU). The peak is measured after building either way.
    built_on = device if family.is_flux else "cpu"
    setup = lookup(ModuleKind.SETUP, family.model_type)(onetrainer_model(family, built_on), config)
    setup.prepare(target, torch_dtype(config.model.dtype))
    training = config.training
    groups = resolve_parameter_groups(setup.parameter_groups(), training)
    trained = [parameter for group in groups for parameter in group["params"]]
    optimizer_groups, masters = offload_to_cpu(groups, target) if training.optimizer_offload else (groups, None)
    optimizer = build_optimizer(optimizer_groups, training, torch.device("cpu") if masters else target)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    precision = MixedPrecision(training.precision, target)
    strategy = build_step(training, optimizer, scheduler, precision, trained, masters=masters)
    generator = torch.Generator(target).manual_seed(training.seed)
    batch = make_batch(family, case, device)
    setup.train()

    def step() -> float:
        with precision.autocast():
            loss = setup.loss(setup.predict(batch, generator), batch)
        strategy.backward(loss)
        strategy.measure()
        strategy.apply()
        return float(loss.detach())

    return step, sum(parameter.numel() for parameter in trained)
