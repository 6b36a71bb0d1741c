"""One training step two ways: ours (the onetrainer setup, as the trainer loop drives it) and a bare diffusers loop.

Both train the same denoiser architecture from the same random weights on the same kind of batch
(latents and text hidden states, as a warm cache provides them, and for SDXL the pooled embedding and
the original size, crop and target size the data loader supplies), with AdamW at the same learning
rate, gradient clipping at 1.0, bf16 autocast, and for LoRA rank 16 on the attention projections
with the frozen base in bf16 and the adapter in fp32 (as diffusers' LoRA example trains). The bare
loop is what diffusers' text-to-image examples do per step (for FLUX.1, its DreamBooth LoRA script:
rectified-flow noising with uniform timesteps, 2x2 packed latents with position ids, guidance 1; for
SD 3.5, its SD 3 DreamBooth LoRA script: logit-normal noise levels shifted by 3, the three encoders'
states joined as the pipeline joins them, the target noise - latents), with accelerate's autocast
spelled out, and ends by reading the loss on the host to log it, as they
do. Ours steps as the trainer does: the step strategy (`trainer.step`) with the trainer's optimizer
(fused AdamW on CUDA), and the loss read back through `trainer.readback` (on CUDA a step late, the
NaN guard decided on the device).

A case may compile (`Case.compile`): ours with `training.compile`, the bare loop with diffusers'
`compile_repeated_blocks`, the regional compilation its documentation recommends (FLUX.1's
transformer names its double- and single-stream blocks); and keep the UNet channels-last
(`Case.channels_last`), both sides. Each side also counts its step's FLOPs
(`trainer.flops.count_flops`, on fake tensors) for the model FLOP utilisation.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from benchmarks.gpu.architectures import FLUX_T5_TOKENS, SD3_T5_TOKENS, Family, build_unet

LORA_RANK = 16
LEARNING_RATE = 1e-4
MAX_GRAD_NORM = 1.0
TOKENS = 77
ATTENTION_PROJECTIONS = ["to_q", "to_k", "to_v", "to_out.0"]
FLUX_ATTENTION_PROJECTIONS = [
    "attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0", "attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj",
    "attn.to_add_out",
]  # fmt: skip
"""diffusers' FLUX DreamBooth LoRA targets: both streams' attention projections (our `attn` preset)."""
SD3_ATTENTION_PROJECTIONS = [
    *FLUX_ATTENTION_PROJECTIONS, "attn2.to_q", "attn2.to_k", "attn2.to_v", "attn2.to_out.0",
]  # fmt: skip
"""diffusers' SD 3 DreamBooth LoRA targets (the same names as FLUX's) and MMDiT-X's second image attention in
3.5 Medium: our `attn` preset."""
SD3_SHIFT = 3.0
"""SD 3's noise-level shift (its scheduler's `shift`)."""


class Unavailable(Exception):
    """This side cannot run this case in this version; the reason is recorded instead of a number."""


@dataclass(frozen=True)
class Case:
    family: str
    resolution: int
    method: str
    """"lora" or "full"."""
    checkpointing: bool
    batch: int = 1
    preset: str | None = None
    """A memory preset whose settings ours trains with (`benchmarks.gpu.memory`); None: plain bf16."""
    compile: bool = False
    """Regional torch.compile of the denoiser's repeated blocks, on both sides."""
    channels_last: bool = False
    """The UNet's weights channels-last, on both sides."""

    def label(self) -> str:
        method = "LoRA" if self.method == "lora" else "full"
        checkpointing = "GC on" if self.checkpointing else "GC off"
        preset = f"preset {self.preset}: " if self.preset else ""
        extras = "".join([", compiled" if self.compile else "", ", channels-last" if self.channels_last else ""])
        return f"{preset}{self.family} {self.resolution} px {method}, {checkpointing}, batch {self.batch}{extras}"


@dataclass
class Side:
    """One side of a case, built and ready to step."""

    step: Callable[[], None]
    """One optimizer step."""
    trainable: int
    """Trained parameters."""
    flops: Callable[[], int]
    """Counts one step's forward and backward FLOPs (on fake tensors: no compute, nothing trained)."""
    last_loss: Callable[[], float]
    """The newest loss the host has read (after the timed steps, with the device synchronised)."""


COMPILE_BACKEND = "inductor"
"""torch.compile's backend for compiled cases; `--dry-run` swaps in `eager` (Dynamo's capture, eager kernels)."""


def make_batch(family: Family, case: Case, device: Any, seed: int = 0) -> dict[str, Any]:
    import torch

    generator = torch.Generator(device).manual_seed(seed)
    side = case.resolution // 8

    def draw(*shape: int) -> torch.Tensor:
        return torch.randn(shape, generator=generator, device=device)

    if family.is_sd3:  # the keys the SD 3 setup reads, as the text cache stores each encoder's outputs
        from onetrainer.model_setup.sd3 import G_HIDDEN, G_POOLED, L_HIDDEN, L_POOLED, T5_HIDDEN

        clip_l, clip_g = family.clip_widths
        return {
            "latents": draw(case.batch, 16, side, side),
            L_HIDDEN: draw(case.batch, TOKENS, clip_l),
            L_POOLED: draw(case.batch, clip_l),
            G_HIDDEN: draw(case.batch, TOKENS, clip_g),
            G_POOLED: draw(case.batch, clip_g),
            T5_HIDDEN: draw(case.batch, SD3_T5_TOKENS, family.context_dim),
        }
    if family.is_flux:
        return {
            "latents": draw(case.batch, 16, side, side),
            "t5_hidden": draw(case.batch, FLUX_T5_TOKENS, family.context_dim),
            "pooled": draw(case.batch, family.pooled_dim or 0),
        }
    batch = {"latents": draw(case.batch, 4, side, side), "text_hidden": draw(case.batch, TOKENS, family.context_dim)}
    if family.pooled_dim is not None:  # SDXL
        batch["pooled"] = draw(case.batch, family.pooled_dim)
        size = [case.resolution, case.resolution]
        batch["original_size"] = torch.tensor([size] * case.batch, device=device)
        batch["crop_top_left"] = torch.zeros(case.batch, 2, dtype=torch.long, device=device)
        batch["target_size"] = torch.tensor([size] * case.batch, device=device)
    return batch


def time_ids(batch: dict[str, Any]) -> Any:
    """SDXL's six size numbers per sample, as diffusers' SDXL example builds `add_time_ids`."""
    import torch

    sizes = [batch["original_size"], batch["crop_top_left"], batch["target_size"]]
    return torch.cat(sizes, dim=1).float()


def _trainable(parameters: Any) -> list[Any]:
    return [parameter for parameter in parameters if parameter.requires_grad]


def _bare_update(
    trained: list[Any], loss: Callable[[], Any], optimizer: Any, losses: list[float]
) -> Callable[[], None]:
    """diffusers' examples' update: backward, clip, step, and the loss read on the host to log it."""
    import torch

    def step() -> None:
        value = loss()
        value.backward()
        torch.nn.utils.clip_grad_norm_(trained, MAX_GRAD_NORM)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses[0] = float(value.detach())

    return step


def _bare_flops(denoiser: Any, trained: list[Any], loss: Callable[[], Any]) -> Callable[[], int]:
    import torch

    from onetrainer.trainer.flops import count_flops

    return lambda: count_flops(lambda: torch.autograd.grad(loss(), trained), modules=[denoiser])


def _bare_denoiser(family: Family, case: Case, device: Any, targets: list[str], **lora: Any) -> tuple[Any, list, Any]:
    """The denoiser as diffusers' example scripts prepare it, with its trained tensors and AdamW: frozen in
    bf16 with a gaussian-initialised LoRA on `targets` trained in fp32 (every weight for a full fine-tune),
    then checkpointing, channels-last and regional compilation as the case asks."""
    import torch

    denoiser = build_unet(family, device)
    denoiser.requires_grad_(False)
    if case.method == "lora":
        from peft import LoraConfig

        denoiser.to(dtype=torch.bfloat16)
        denoiser.add_adapter(
            LoraConfig(r=LORA_RANK, lora_alpha=LORA_RANK, init_lora_weights="gaussian", target_modules=targets, **lora)
        )
        for parameter in _trainable(denoiser.parameters()):
            parameter.data = parameter.data.float()
    else:
        denoiser.requires_grad_(True)
    if case.checkpointing:
        denoiser.enable_gradient_checkpointing()
    if case.channels_last:
        denoiser.to(memory_format=torch.channels_last)
    if case.compile:
        denoiser.compile_repeated_blocks(backend=COMPILE_BACKEND)
    denoiser.train()
    trained = _trainable(denoiser.parameters())
    return denoiser, trained, torch.optim.AdamW(trained, lr=LEARNING_RATE, weight_decay=1e-2)


def bare_step(family: Family, case: Case, device: Any) -> Side:
    """diffusers' example loop."""
    if family.is_flux:
        return bare_flux_step(family, case, device)
    if family.is_sd3:
        return bare_sd3_step(family, case, device)
    import torch
    import torch.nn.functional as F
    from diffusers import DDPMScheduler

    unet, trained, optimizer = _bare_denoiser(family, case, device, ATTENTION_PROJECTIONS)
    scheduler = DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
    batch = make_batch(family, case, device)
    extra = (
        {"added_cond_kwargs": {"text_embeds": batch["pooled"], "time_ids": time_ids(batch)}} if family.is_sdxl else {}
    )
    device_type = torch.device(device).type
    losses = [float("nan")]

    def loss() -> torch.Tensor:
        latents = batch["latents"]
        noise = torch.randn_like(latents)
        timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (latents.shape[0],), device=latents.device)
        noisy = scheduler.add_noise(latents, noise, timesteps)
        with torch.autocast(device_type, dtype=torch.bfloat16):
            prediction = unet(noisy, timesteps, encoder_hidden_states=batch["text_hidden"], **extra).sample
        return F.mse_loss(prediction.float(), noise.float())

    step = _bare_update(trained, loss, optimizer, losses)
    flops = _bare_flops(unet, trained, loss)
    return Side(step, sum(parameter.numel() for parameter in trained), flops, lambda: losses[0])


def bare_flux_step(family: Family, case: Case, device: Any) -> Side:
    """diffusers' FLUX DreamBooth LoRA loop (`train_dreambooth_lora_flux.py`), per step."""
    import torch
    import torch.nn.functional as F
    from diffusers import FluxPipeline

    if case.method != "lora":
        raise Unavailable("FLUX.1 is benchmarked with LoRA only")
    transformer, trained, optimizer = _bare_denoiser(family, case, device, FLUX_ATTENTION_PROJECTIONS)
    batch = make_batch(family, case, device)
    latents = batch["latents"]
    size, (_, channels, height, width) = case.batch, latents.shape
    image_ids = FluxPipeline._prepare_latent_image_ids(size, height // 2, width // 2, device, torch.bfloat16)
    text_ids = torch.zeros(FLUX_T5_TOKENS, 3, device=device, dtype=torch.bfloat16)
    guidance = torch.ones(size, device=device)
    device_type = torch.device(device).type
    losses = [float("nan")]

    def loss() -> torch.Tensor:
        noise = torch.randn_like(latents)
        sigmas = torch.rand(size, device=latents.device)
        noisy = (1 - sigmas[:, None, None, None]) * latents + sigmas[:, None, None, None] * noise
        packed = FluxPipeline._pack_latents(noisy, size, channels, height, width)
        with torch.autocast(device_type, dtype=torch.bfloat16):
            prediction = transformer(
                hidden_states=packed,
                timestep=sigmas,
                guidance=guidance,
                pooled_projections=batch["pooled"],
                encoder_hidden_states=batch["t5_hidden"],
                txt_ids=text_ids,
                img_ids=image_ids,
                return_dict=False,
            )[0]
        prediction = FluxPipeline._unpack_latents(prediction, height * 8, width * 8, 8)
        return F.mse_loss(prediction.float(), (noise - latents).float())

    step = _bare_update(trained, loss, optimizer, losses)
    flops = _bare_flops(transformer, trained, loss)
    return Side(step, sum(parameter.numel() for parameter in trained), flops, lambda: losses[0])


def bare_sd3_step(family: Family, case: Case, device: Any) -> Side:
    """diffusers' SD 3 DreamBooth LoRA loop (`train_dreambooth_lora_sd3.py`), per step, kept simple: noise
    levels sigma = 3u / (1 + 2u) with u logit-normal (mean 0, std 1; the script's default weighting scheme, whose
    loss weights are all 1), the time 1000 sigma (continuous, where the script indexes the scheduler's 1000
    shifted steps), the target noise - latents with a plain MSE (no output preconditioning). The prompt
    embeddings are joined once, as the script precomputes them: CLIP-L's and bigG's states side by side,
    zero-padded to T5's width, T5's after them; the pooled outputs side by side.

    The last block's text query (`attn.add_q_proj`) gets no adapter: that block discards its text outputs, so
    the query never gets a gradient, and our `attn` preset leaves it out (the script's adapter there never trains).
    """
    import torch
    import torch.nn.functional as F

    from onetrainer.model_setup.sd3 import G_HIDDEN, G_POOLED, L_HIDDEN, L_POOLED, T5_HIDDEN

    if case.method != "lora":
        raise Unavailable("SD 3.5 is benchmarked with LoRA only")
    last = int(family.unet_config["num_layers"]) - 1
    transformer, trained, optimizer = _bare_denoiser(
        family, case, device, SD3_ATTENTION_PROJECTIONS, exclude_modules=[f"transformer_blocks.{last}.attn.add_q_proj"]
    )
    batch = make_batch(family, case, device)
    latents = batch["latents"]
    clip = torch.cat([batch[L_HIDDEN], batch[G_HIDDEN]], dim=-1)
    clip = F.pad(clip, (0, family.context_dim - clip.shape[-1]))
    prompt = torch.cat([clip, batch[T5_HIDDEN]], dim=-2)
    pooled = torch.cat([batch[L_POOLED], batch[G_POOLED]], dim=-1)
    device_type = torch.device(device).type
    losses = [float("nan")]

    def loss() -> torch.Tensor:
        noise = torch.randn_like(latents)
        unit = torch.sigmoid(torch.randn(latents.shape[0], device=latents.device))
        sigmas = SD3_SHIFT * unit / (1 + (SD3_SHIFT - 1) * unit)
        noisy = (1 - sigmas[:, None, None, None]) * latents + sigmas[:, None, None, None] * noise
        with torch.autocast(device_type, dtype=torch.bfloat16):
            prediction = transformer(
                hidden_states=noisy,
                timestep=sigmas * 1000,
                encoder_hidden_states=prompt,
                pooled_projections=pooled,
                return_dict=False,
            )[0]
        return F.mse_loss(prediction.float(), (noise - latents).float())

    step = _bare_update(trained, loss, optimizer, losses)
    flops = _bare_flops(transformer, trained, loss)
    return Side(step, sum(parameter.numel() for parameter in trained), flops, lambda: losses[0])


def ours_step(family: Family, case: Case, device: Any) -> Side:
    """The setup's prepare / predict / loss, stepped by the trainer's step strategy and read-back.

    A memory-preset case trains with the preset's settings (`benchmarks.gpu.memory`), built in CPU
    memory as the loader leaves it; the transformers' bf16 weights (FLUX.1's 12 B, SD 3.5's up to 8.1 B) are
    built on the device instead (their random initialisation takes minutes on the CPU). The peak is
    measured after building either way.
    """
    from onetrainer.util.config.schema import TrainConfig
    from onetrainer.util.registry import ModuleKind, supported

    if family.model_type not in supported(ModuleKind.SETUP):
        raise Unavailable(f"onetrainer has no {family.name} training setup yet")
    if case.preset is not None:
        from benchmarks.gpu.memory import preset_config

        config = preset_config(case.preset, device)
        return trained_side(family, case, device, config, built_on="cpu" if family.kind == "unet" else device)
    if family.kind != "unet" and case.method != "lora":
        raise Unavailable(f"{'FLUX.1' if family.is_flux else 'SD 3.5'} is benchmarked with LoRA only")
    options = {"t5_max_length": SD3_T5_TOKENS} if family.is_sd3 else {}
    config = TrainConfig.model_validate(
        {
            "model": {"type": family.model_type, "dtype": "bf16", "options": options},
            "method": case.method,
            "lora": {"rank": LORA_RANK, "alpha": LORA_RANK, "targets": "attn"},
            "training": {
                "precision": "bf16",
                "gradient_checkpointing": case.checkpointing,
                "compile": case.compile,
                "channels_last": case.channels_last,
                "learning_rate": LEARNING_RATE,
                "max_grad_norm": MAX_GRAD_NORM,
                "device": str(device),
            },
        }
    )
    return trained_side(family, case, device, config, built_on=device)


def trained_side(family: Family, case: Case, device: Any, config: Any, *, built_on: Any) -> Side:
    """`config`'s run on the real-size denoiser built on `built_on`, as `trainer.start` steps it."""
    import torch

    from onetrainer.model_setup import compile as regional
    from onetrainer.trainer.flops import count_flops, step_pass
    from onetrainer.trainer.optimizers import build_optimizer, resolve_parameter_groups
    from onetrainer.trainer.precision import MixedPrecision
    from onetrainer.trainer.readback import StepRecord, StepResults, resolve_lag
    from onetrainer.trainer.step import build_step
    from onetrainer.trainer.updates import offload_to_cpu
    from onetrainer.util.dtypes import torch_dtype
    from onetrainer.util.registry import ModuleKind, lookup

    model = onetrainer_model(family, built_on)
    setup = lookup(ModuleKind.SETUP, family.model_type)(model, config)
    target = torch.device(device)
    regional.BACKEND = COMPILE_BACKEND
    setup.prepare(target, torch_dtype(config.model.dtype))
    training = config.training
    groups = resolve_parameter_groups(setup.parameter_groups(), training)
    trained = [parameter for group in groups for parameter in group["params"]]
    optimizer_groups, masters = offload_to_cpu(groups, target) if training.optimizer_offload else (groups, None)
    optimizer = build_optimizer(optimizer_groups, training, torch.device("cpu") if masters else target)
    precision = MixedPrecision(training.precision, target)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    strategy = build_step(training, optimizer, schedule, precision, trained, masters=masters)
    generator = torch.Generator(target).manual_seed(training.seed)
    batch = make_batch(family, case, device)
    losses = [float("nan")]

    def check(record: StepRecord) -> None:
        if not math.isfinite(record.loss):
            raise RuntimeError(f"the loss became {record.loss} at step {record.step}")
        losses[0] = record.loss

    lag = resolve_lag("auto", target, skips_on_device=strategy.skips_on_device)
    results = StepResults(target, lag, tolerates_overflow=False, check=check)
    steps = [0]
    setup.train()

    def step() -> None:
        steps[0] += 1
        with precision.autocast():
            loss = setup.loss(setup.predict(batch, generator), batch)
        strategy.backward(loss)
        skip = results.measure(steps[0], loss.detach().float(), strategy.measure())
        results.finish(0, strategy.apply(skip))
        results.ready()

    def flops() -> int:
        one_pass = step_pass(setup, generator, precision.autocast, trained)
        return count_flops(lambda: one_pass(batch), modules=[model.denoiser])

    def last_loss() -> float:
        results.ready(everything=True)
        return losses[0]

    return Side(step, sum(parameter.numel() for parameter in trained), flops, last_loss)


def onetrainer_model(family: Family, device: Any) -> Any:
    """The real-size denoiser beside the tiny kit's VAE and text encoders, which a cached batch never runs."""
    from onetrainer.model.diffusion import DiffusionModel
    from onetrainer.util.family import tiny_model

    spec, tiny = tiny_model(family.model_type)
    return DiffusionModel.from_pipeline(
        tiny.build(0),
        spec,
        source="benchmark",
        prediction_type="epsilon" if family.kind == "unet" else None,
        **{spec.denoiser.name: build_unet(family, device)},
    )


SIDES: dict[str, Callable[[Family, Case, Any], Side]] = {"ours": ours_step, "diffusers": bare_step}
