"""Tiny random-weight diffusers pipelines with the real module structure of each family.

Loaders, savers, key-map tables and the training loop must be tested against the real layouts
(block types, attention projections, dual text encoders, key names) without real weights, which
cannot be downloaded here. These builders keep every structural choice of the family and shrink only
the widths, so a whole pipeline builds in well under a second and trains on a CPU.

Weights are random but reproducible: each component is initialised under its own seed, derived from
the run seed and the component name, inside a forked RNG, so the caller's global RNG stream is left
alone and changing one component's shape never changes another component's weights.
"""

from __future__ import annotations

import os
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from onetrainer.util.atomic import atomic_directory
from onetrainer.util.tiny.tokenizer import build_tiny_clip_tokenizer, build_tiny_t5_tokenizer

if TYPE_CHECKING:
    from diffusers import DiffusionPipeline, FluxPipeline, StableDiffusionPipeline, StableDiffusionXLPipeline
    from transformers import CLIPTextConfig, CLIPTokenizer

MODEL_KINDS = ("sd15", "sd2", "sd2-v", "sdxl", "flux-dev", "flux-schnell", "sd35-large", "sd35-medium", "sd3-medium")
"""Kinds `save_tiny_model` accepts; "sd2" is epsilon-prediction, "sd2-v" v-prediction."""

_T = TypeVar("_T")

# SD 1.x/2.x/XL all train with the same "scaled_linear" beta schedule.
_BETAS: dict[str, Any] = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear"}


def _component_seed(seed: int, component: str) -> int:
    return (seed * 1_000_003 + zlib.crc32(component.encode())) % (2**63)


def seeded(seed: int, component: str, factory: Callable[[], _T]) -> _T:
    """Run `factory` (which initialises weights from torch's global RNG) under a component seed."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_component_seed(seed, component))
        return factory()


def text_config(
    tokenizer: CLIPTokenizer, *, hidden_size: int, hidden_act: str, projection_dim: int = 32
) -> CLIPTextConfig:
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=37,
        projection_dim=projection_dim,
        num_attention_heads=4,
        num_hidden_layers=2,
        max_position_embeddings=tokenizer.model_max_length,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=2,  # the released configs' old value (see `DiffusionModel._pool_at_the_end_token`)
        pad_token_id=tokenizer.pad_token_id,
        hidden_act=hidden_act,
    )


def tiny_vae(seed: int, scaling_factor: float, *, latent_channels: int = 4, shift_factor: float | None = None) -> Any:
    """Four encoder levels, as in SD, so the /8 downscale holds: 64 px images give 8x8 latents. A VAE with a
    `shift_factor` (the 16-channel VAEs of FLUX.1 and SD 3) has no quant convs, as the released ones."""
    from diffusers import AutoencoderKL

    shifted = {} if shift_factor is None else {"use_quant_conv": False, "use_post_quant_conv": False}
    return seeded(
        seed,
        "vae",
        lambda: AutoencoderKL(
            in_channels=3,
            out_channels=3,
            block_out_channels=(32, 32, 64, 64),
            layers_per_block=1,
            latent_channels=latent_channels,
            norm_num_groups=32,
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            sample_size=64,
            scaling_factor=scaling_factor,
            shift_factor=shift_factor,
            **shifted,
        ),
    )


def _tiny_unet(seed: int, **layout: Any) -> Any:
    """A seeded UNet of the tiny size every family shares (8x8 latents, widths 32/64); `layout` adds the family's."""
    from diffusers import UNet2DConditionModel

    return seeded(
        seed,
        "unet",
        lambda: UNet2DConditionModel(
            sample_size=8,
            in_channels=4,
            out_channels=4,
            block_out_channels=(32, 64),
            layers_per_block=1,
            norm_num_groups=32,
            **layout,
        ),
    )


def _ddpm(prediction_type: str) -> Any:
    from diffusers import DDPMScheduler

    return DDPMScheduler(
        **_BETAS,
        num_train_timesteps=1000,
        prediction_type=prediction_type,
        clip_sample=False,
        steps_offset=1,
    )


def _sd_pipeline(
    seed: int, *, unet_kwargs: dict[str, Any], hidden_act: str, prediction_type: str, pad_token: str | None = None
) -> Any:
    from diffusers import StableDiffusionPipeline
    from transformers import CLIPTextModel

    tokenizer = build_tiny_clip_tokenizer()
    if pad_token is not None:
        tokenizer.pad_token = pad_token
    config = text_config(tokenizer, hidden_size=32, hidden_act=hidden_act)
    pipe = StableDiffusionPipeline(
        vae=tiny_vae(seed, scaling_factor=0.18215),
        text_encoder=seeded(seed, "text_encoder", lambda: CLIPTextModel(config)),
        tokenizer=tokenizer,
        unet=_tiny_unet(
            seed,
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=config.hidden_size,
            **unet_kwargs,
        ),
        scheduler=_ddpm(prediction_type),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def build_tiny_sd15_pipeline(seed: int = 0) -> StableDiffusionPipeline:
    """SD 1.5 layout: quick_gelu CLIP text encoder, per-head-dim attention with conv projections."""
    return _sd_pipeline(
        seed,
        unet_kwargs={"attention_head_dim": 8},
        hidden_act="quick_gelu",
        prediction_type="epsilon",
    )


def build_tiny_sd2_pipeline(seed: int = 0, v_prediction: bool = True) -> StableDiffusionPipeline:
    """SD 2.x layout: gelu (OpenCLIP) text encoder, per-block head counts, linear attention projections.

    The v-prediction variant mirrors the 768-v checkpoints, whose attention also needs fp32 upcasting.
    """
    return _sd_pipeline(
        seed,
        unet_kwargs={
            "attention_head_dim": (2, 4),
            "use_linear_projection": True,
            "upcast_attention": v_prediction,
        },
        hidden_act="gelu",
        prediction_type="v_prediction" if v_prediction else "epsilon",
        pad_token="!",  # as the released 2.x tokenizers: OpenCLIP ViT-H was trained padding with "!"
    )


def build_tiny_sdxl_pipeline(seed: int = 0) -> StableDiffusionXLPipeline:
    """SDXL layout: two text encoders of different widths feeding one concatenated context.

    The encoders differ in width (32 and 64, like CLIP-L's 768 and bigG's 1280 differ) so code that
    swaps them, or concatenates in the wrong order, fails on shapes instead of passing silently; and, as
    in SDXL, the second tokenizer pads with "!" where the first pads with its end-of-text token.
    """
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    tokenizer = build_tiny_clip_tokenizer()
    tokenizer_2 = build_tiny_clip_tokenizer()
    tokenizer_2.pad_token = "!"  # as SDXL's tokenizer_2: OpenCLIP bigG was trained padding with "!"
    config_1 = text_config(tokenizer, hidden_size=32, hidden_act="quick_gelu")
    config_2 = text_config(tokenizer, hidden_size=64, hidden_act="gelu")
    time_embed_dim = 8
    pipe = StableDiffusionXLPipeline(
        vae=tiny_vae(seed, scaling_factor=0.13025),
        text_encoder=seeded(seed, "text_encoder", lambda: CLIPTextModel(config_1)),
        text_encoder_2=seeded(seed, "text_encoder_2", lambda: CLIPTextModelWithProjection(config_2)),
        tokenizer=tokenizer,
        tokenizer_2=tokenizer_2,
        unet=_tiny_unet(
            seed,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            attention_head_dim=(2, 4),
            use_linear_projection=True,
            transformer_layers_per_block=(1, 2),
            addition_embed_type="text_time",
            addition_time_embed_dim=time_embed_dim,
            # Six micro-conditioning numbers (original size, crop, target size) plus the pooled text.
            projection_class_embeddings_input_dim=6 * time_embed_dim + config_2.projection_dim,
            cross_attention_dim=config_1.hidden_size + config_2.hidden_size,
        ),
        scheduler=EulerDiscreteScheduler(
            **_BETAS,
            num_train_timesteps=1000,
            prediction_type="epsilon",
            steps_offset=1,
            timestep_spacing="leading",
        ),
        force_zeros_for_empty_prompt=True,
        add_watermarker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


FLUX_SCHEDULERS: dict[str, dict[str, Any]] = {
    "dev": {"shift": 3.0, "use_dynamic_shifting": True, "base_shift": 0.5, "max_shift": 1.15},
    "schnell": {"shift": 1.0, "use_dynamic_shifting": False},
}
"""The released models' `scheduler_config.json` settings: dev shifts by resolution, schnell not at all."""


def build_tiny_flux_pipeline(seed: int = 0, *, guidance: bool = True) -> FluxPipeline:
    """FLUX.1 layout: CLIP-L pooled + T5 hidden states into a double/single-stream transformer.

    Two double-stream and two single-stream blocks (so block indices of both kinds are exercised), 16
    latent channels packed 2x2 into 64-wide tokens, rotary axes that sum to the head width as in the
    real (16, 56, 56) / 128 layout. CLIP (32 wide) and T5 (48 wide) differ in width so a swapped
    encoder fails on shapes. `guidance` gives the transformer dev's guidance embedder (schnell has none).
    """
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextModel, T5Config, T5EncoderModel

    tokenizer = build_tiny_clip_tokenizer()
    tokenizer_2 = build_tiny_t5_tokenizer()
    clip_config = text_config(tokenizer, hidden_size=32, hidden_act="quick_gelu")
    t5_config = T5Config(
        vocab_size=len(tokenizer_2),
        d_model=48,
        d_kv=8,
        d_ff=40,
        num_layers=2,
        num_heads=4,
        feed_forward_proj="gated-gelu",
        is_encoder_decoder=False,
        use_cache=False,
        pad_token_id=tokenizer_2.pad_token_id,
        eos_token_id=tokenizer_2.eos_token_id,
    )
    transformer = seeded(
        seed,
        "transformer",
        lambda: FluxTransformer2DModel(
            patch_size=1,
            in_channels=64,
            num_layers=2,
            num_single_layers=2,
            attention_head_dim=16,
            num_attention_heads=2,
            joint_attention_dim=t5_config.d_model,
            pooled_projection_dim=clip_config.hidden_size,
            guidance_embeds=guidance,
            axes_dims_rope=(4, 6, 6),
        ),
    )
    pipe = FluxPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(
            num_train_timesteps=1000, **FLUX_SCHEDULERS["dev" if guidance else "schnell"]
        ),
        vae=tiny_vae(seed, scaling_factor=0.3611, latent_channels=16, shift_factor=0.1159),
        text_encoder=seeded(seed, "text_encoder", lambda: CLIPTextModel(clip_config)),
        tokenizer=tokenizer,
        text_encoder_2=seeded(seed, "text_encoder_2", lambda: T5EncoderModel(t5_config)),
        tokenizer_2=tokenizer_2,
        transformer=transformer,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def build_tiny_pipeline(kind: str, seed: int = 0) -> DiffusionPipeline:
    """Dispatch on one of `MODEL_KINDS`."""
    builders: dict[str, Callable[[], DiffusionPipeline]] = {
        "sd15": lambda: build_tiny_sd15_pipeline(seed),
        "sd2": lambda: build_tiny_sd2_pipeline(seed, v_prediction=False),
        "sd2-v": lambda: build_tiny_sd2_pipeline(seed, v_prediction=True),
        "sdxl": lambda: build_tiny_sdxl_pipeline(seed),
        "flux-dev": lambda: build_tiny_flux_pipeline(seed, guidance=True),
        "flux-schnell": lambda: build_tiny_flux_pipeline(seed, guidance=False),
        **{kind: _sd3(kind, seed) for kind in ("sd35-large", "sd35-medium", "sd3-medium")},
    }
    if kind not in builders:
        raise ValueError(f"unknown tiny model kind {kind!r}; expected one of {', '.join(MODEL_KINDS)}")
    return builders[kind]()


def _sd3(kind: str, seed: int) -> Callable[[], DiffusionPipeline]:
    def build() -> DiffusionPipeline:
        from onetrainer.util.tiny.sd3 import build_tiny_sd3_pipeline

        return build_tiny_sd3_pipeline(kind, seed)

    return build


def scheduler_config(pipe: DiffusionPipeline) -> dict[str, Any]:
    """The pipeline's scheduler config as a config file holds it: the values set, and the class name.

    diffusers marks the values a scheduler took by default in `_use_default_values`, and when another
    scheduler class is built `from_config`, those keys take that class's own defaults (Euler's
    `timestep_spacing` is "linspace" where DDPM's is "leading"). Copying the config as plain values would
    pin DDPM's defaults onto every solver, and a tiny model would sample unlike the same pipeline in
    diffusers (and unlike a real SD model, whose scheduler_config.json sets no `timestep_spacing`).
    """
    config = dict(pipe.scheduler.config)
    defaults = set(config.pop("_use_default_values", ()))
    kept = {key: value for key, value in config.items() if key not in defaults}
    return {**kept, "_class_name": type(pipe.scheduler).__name__}


def save_tiny_model(
    kind: str,
    path: str | os.PathLike[str],
    *,
    seed: int = 0,
    overwrite: bool = False,
) -> Path:
    """Write a tiny pipeline as a diffusers folder (safetensors); the folder appears only when complete."""
    pipe = build_tiny_pipeline(kind, seed)
    target = Path(path)
    with atomic_directory(target, overwrite=overwrite) as tmp:
        pipe.save_pretrained(tmp, safe_serialization=True)
    return target
