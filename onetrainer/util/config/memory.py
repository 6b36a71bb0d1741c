"""Checks of the memory levers that span sections: which combinations can work, refused up front otherwise.

The levers (`parts.<name>.weight_dtype` fp8/int8/nf4 and bf16 trained weights, `parts.<denoiser>.offload_blocks`,
`training.fused_backward`, `stochastic_rounding`, `optimizer_offload`, `activation_offload`) each have
limits that follow from how they work:

- Quantised storage (fp8, int8, nf4) is weight-only and frozen: a fully trained part cannot be stored
  so, and the VAE (convolutions, which stay unquantised) gains nothing from it. peft's LyCORIS layers
  (LoHa, LoKr) read the base weight's shape, which nf4 packs; LoRA and DoRA work on every format.
- Trained weights in bf16 lose every update smaller than 1/256 of the weight when rounded to
  nearest; they are allowed with stochastic rounding, which keeps the update's expected value. fp16
  trained weights are refused (their range overflows as well).
- A fused backward pass updates each tensor while the backward pass is still running, so nothing can
  look at all gradients first: not gradient accumulation (the gradients would have to be kept),
  not clipping by the total norm (unknown until the end), not fp16's loss scaling (which skips a
  whole step on overflow). What it can do it does: the gradient norm is still measured, and a
  non-finite one stops the run after the pass; the weights it changed are never saved.
- Fused backward, stochastic rounding and optimizer offloading step one tensor at a time, which is
  exact only for optimizers whose state and update are per tensor (`PER_TENSOR`).
- Layer and activation offloading save memory only with gradient checkpointing: without it autograd
  keeps every block's weights and activations on the GPU until the backward pass anyway. Layer
  offloading keeps a CPU copy of each block, which bitsandbytes' nf4 weights cannot give (moving one
  moves its scales in place).
"""

from __future__ import annotations

from onetrainer.util.config.parts import WeightDtype
from onetrainer.util.config.schema import TrainConfig
from onetrainer.util.config.training import FUSED_ON_CUDA, Optimizer, Precision
from onetrainer.util.dtypes import is_quantised
from onetrainer.util.enums import TrainingMethod
from onetrainer.util.errors import ConfigProblem
from onetrainer.util.family import Role, find_family

PER_TENSOR_LEVERS = ("fused_backward", "stochastic_rounding", "optimizer_offload")
"""The `training` switches that update one tensor at a time (`trainer.step`'s per-tensor updater)."""
PER_TENSOR = (Optimizer.ADAMW, Optimizer.ADAMW_8BIT, Optimizer.ADAMW_8BIT_AO, Optimizer.ADAFACTOR, Optimizer.SGD)
"""Optimizers whose state and update are per tensor, so stepping one tensor at a time is exact."""


def memory_problems(config: TrainConfig) -> list[ConfigProblem]:
    """Every impossible combination of memory settings; empty when there is none."""
    return [*_dtype_problems(config), *_step_problems(config), *_offload_problems(config)]


def fully_trained(config: TrainConfig) -> list[str]:
    """The parts whose own weights train (method full)."""
    if config.method is not TrainingMethod.FULL:
        return []
    return [name for name, part in config.parts.items() if part.train]


def bf16_trained(config: TrainConfig) -> list[str]:
    """Fully trained parts that keep their weights in bf16."""
    return [name for name in fully_trained(config) if config.parts[name].weight_dtype is WeightDtype.BF16]


def _dtype_problems(config: TrainConfig) -> list[ConfigProblem]:
    spec = find_family(config.model.type)
    problems: list[ConfigProblem] = []
    trained = set(fully_trained(config))
    for name, part in config.parts.items():
        dtype = part.weight_dtype
        if dtype is None:
            continue
        key = f"parts.{name}.weight_dtype"
        role = spec.component(name).role if spec is not None and name in spec.component_names else None
        if is_quantised(dtype) and role is Role.VAE:
            problems.append(
                ConfigProblem(
                    key,
                    f"{dtype.value} quantises linear layers only, and the VAE is convolutions: use fp32, bf16 or fp16",
                    dtype.value,
                    has_value=True,
                )
            )
        elif is_quantised(dtype) and name in trained:
            problems.append(
                ConfigProblem(
                    key,
                    f"{dtype.value} is a frozen, weight-only format: a fully trained part keeps fp32 (or bf16 with "
                    "training.stochastic_rounding); train a LoRA on a quantised part instead (method: lora)",
                    dtype.value,
                    has_value=True,
                )
            )
        elif is_quantised(dtype) and config.method is TrainingMethod.FULL:
            problems.append(
                ConfigProblem(
                    key,
                    f"a full fine-tune saves whole-model files, which would hold this frozen part's {dtype.value} "
                    "weights instead of its own: keep it in fp32, bf16 or fp16 (a cached run keeps frozen text "
                    "encoders in CPU memory anyway), or train a LoRA on the quantised model (method: lora)",
                    dtype.value,
                    has_value=True,
                )
            )
        elif dtype is WeightDtype.FP16 and name in trained:
            problems.append(
                ConfigProblem(
                    key,
                    "trained weights in fp16 overflow and lose small updates: use fp32, or bf16 with "
                    "training.stochastic_rounding",
                    dtype.value,
                    has_value=True,
                )
            )
        elif dtype is WeightDtype.BF16 and name in trained and not config.training.stochastic_rounding:
            problems.append(
                ConfigProblem(
                    key,
                    "trained weights in bf16 lose every update smaller than 1/256 of the weight: set "
                    "training.stochastic_rounding=true (or keep fp32)",
                    dtype.value,
                    has_value=True,
                )
            )
    lycoris = config.method is TrainingMethod.LORA and config.lora.type.value in ("loha", "lokr")
    for name, part in config.parts.items():
        if lycoris and part.train and part.weight_dtype is WeightDtype.NF4:
            problems.append(
                ConfigProblem(
                    f"parts.{name}.weight_dtype",
                    f"a {config.lora.type.value} adapter cannot train on nf4 weights (peft's LyCORIS layers read the "
                    "weight's shape, which bitsandbytes packs): use lora or dora, or fp8 / int8 weights",
                    "nf4",
                    has_value=True,
                )
            )
    if config.training.stochastic_rounding and not bf16_trained(config):
        problems.append(
            ConfigProblem(
                "training.stochastic_rounding",
                "no trained weights are bf16 (LoRA and embedding weights train in fp32); it rounds the weights of "
                "fully trained parts with parts.<name>.weight_dtype: bf16",
                True,
                has_value=True,
            )
        )
    return problems


def _lag_problems(config: TrainConfig) -> list[ConfigProblem]:
    """A read-back lag needs an update that skips a diverged step on the device (`trainer.readback`): torch's
    fused kernels of `FUSED_ON_CUDA`, which updates tensor by tensor never build. Said here, before loading,
    rather than once the step is built."""
    training = config.training
    if training.read_back_lag == "auto" or int(training.read_back_lag) == 0:
        return []
    levers = [key for key in PER_TENSOR_LEVERS if getattr(training, key)]
    if levers:
        why = f"training.{levers[0]} updates tensor by tensor, which cannot skip a diverged step on the device"
    elif training.optimizer not in FUSED_ON_CUDA:
        why = f"the {training.optimizer.value} optimizer cannot skip a diverged step on the device"
    else:
        return []
    return [ConfigProblem("training.read_back_lag", f"{why}: use auto or 0", training.read_back_lag, has_value=True)]


def _step_problems(config: TrainConfig) -> list[ConfigProblem]:
    training = config.training
    problems: list[ConfigProblem] = []
    per_tensor = ", ".join(optimizer.value for optimizer in PER_TENSOR)
    for key in PER_TENSOR_LEVERS:
        if not getattr(training, key):
            continue
        if training.optimizer not in PER_TENSOR:
            problems.append(
                ConfigProblem(
                    f"training.{key}",
                    f"updates one tensor at a time, which the {training.optimizer.value} optimizer does not support "
                    f"(its update depends on every tensor); use one of: {per_tensor}",
                    True,
                    has_value=True,
                )
            )
        if training.precision is Precision.FP16:
            problems.append(
                ConfigProblem(
                    f"training.{key}",
                    "does not combine with precision fp16, whose loss scaling skips whole steps; use bf16 or fp32",
                    True,
                    has_value=True,
                )
            )
    problems.extend(_lag_problems(config))
    if training.optimizer_offload and training.optimizer is Optimizer.ADAMW_8BIT:
        problems.append(
            ConfigProblem(
                "training.optimizer",
                "bitsandbytes' 8-bit AdamW runs on CUDA only, and optimizer_offload steps in CPU memory: use "
                "adamw8bit_ao (torchao's, which runs on the CPU too)",
                training.optimizer.value,
                has_value=True,
            )
        )
    if training.fused_backward:
        if training.gradient_accumulation_steps != 1:
            problems.append(
                ConfigProblem(
                    "training.gradient_accumulation_steps",
                    "fused_backward updates each tensor during the backward pass, so gradients cannot be "
                    "accumulated over batches: set it to 1 (or raise training.batch_size)",
                    training.gradient_accumulation_steps,
                    has_value=True,
                )
            )
        if training.max_grad_norm is not None:
            problems.append(
                ConfigProblem(
                    "training.max_grad_norm",
                    "fused_backward updates each tensor before the total gradient norm is known, so it cannot "
                    "clip by it: set it to null",
                    training.max_grad_norm,
                    has_value=True,
                )
            )
    return problems


def _offload_problems(config: TrainConfig) -> list[ConfigProblem]:
    spec = find_family(config.model.type)
    problems: list[ConfigProblem] = []
    trained = set(fully_trained(config))
    checkpointing = config.training.gradient_checkpointing
    if config.training.activation_offload and not checkpointing:
        problems.append(
            ConfigProblem(
                "training.activation_offload",
                "offloads the activations checkpointing keeps; without training.gradient_checkpointing it would "
                "copy every activation to the CPU and back: turn checkpointing on",
                True,
                has_value=True,
            )
        )
    for name, part in config.parts.items():
        if part.offload_blocks and part.weight_dtype is WeightDtype.NF4:
            problems.append(
                ConfigProblem(
                    f"parts.{name}.offload_blocks",
                    "layer offloading does not take nf4 weights (bitsandbytes moves a 4-bit weight's scales in "
                    "place, so a block could not keep its CPU copy): use fp8 or int8 weights with offloading",
                    part.offload_blocks,
                    has_value=True,
                )
            )
        if part.offload_blocks and name in trained and config.training.precision is Precision.FP16:
            problems.append(
                ConfigProblem(
                    f"parts.{name}.offload_blocks",
                    "a fully trained part's offloaded blocks take their gradients in CPU memory, where fp16's loss "
                    "scaler would unscale them by a value still on its way from the GPU: use precision bf16 or fp32",
                    part.offload_blocks,
                    has_value=True,
                )
            )
        if not part.offload_blocks or checkpointing:
            continue
        if spec is not None and name in spec.component_names and spec.component(name).role is not Role.DENOISER:
            continue  # the family check refuses the key on other parts
        problems.append(
            ConfigProblem(
                f"parts.{name}.offload_blocks",
                "without training.gradient_checkpointing autograd keeps every block's weights on the GPU until the "
                "backward pass, so offloading saves nothing: turn checkpointing on",
                part.offload_blocks,
                has_value=True,
            )
        )
    return problems
