"""Tiny random-weight SD 3 / 3.5 pipelines: the real module structure of each MMDiT, tiny widths.

Three text encoders of three widths (CLIP-L 32, bigG 48, T5 96), so a swapped or misplaced encoder
fails on shapes: the CLIP hidden states (32 + 48) are zero-padded to T5's width, which is the MMDiT's
`joint_attention_dim`, and the pooled outputs (32 + 48) are its `pooled_projection_dim`. As in the released
models, CLIP-L's projection is the identity (SD 3 reads its pooled output unprojected), bigG's tokenizer
pads with "!", the VAE has 16 channels, no quant convs, scale 1.5305 and shift 0.0609, and the schedule
shifts by 3. Two MMDiT blocks (so the last block's text-stream-free form and a block before it are both
exercised); `LAYOUTS` gives each model type its own: 3.5 Large's q/k RMS norms, 3.5 Medium's MMDiT-X
second self-attention in its first block, SD 3 Medium's plain blocks.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from diffusers import StableDiffusion3Pipeline

LAYOUTS: dict[str, dict[str, Any]] = {
    "sd35-large": {"qk_norm": "rms_norm", "dual_attention_layers": ()},
    "sd35-medium": {"qk_norm": "rms_norm", "dual_attention_layers": (0,)},
    "sd3-medium": {"qk_norm": None, "dual_attention_layers": ()},
}
"""The transformer settings that tell the three model types apart."""
CLIP_L_WIDTH, CLIP_G_WIDTH, T5_WIDTH = 32, 48, 96
SCALING_FACTOR, SHIFT_FACTOR = 1.5305, 0.0609
SHIFT = 3.0


def _clip(seed: int, name: str, config: Any, *, identity: bool) -> Any:
    import torch
    from transformers import CLIPTextModelWithProjection

    from onetrainer.util.tiny.models import seeded

    model = seeded(seed, name, lambda: CLIPTextModelWithProjection(config))
    if identity:
        with torch.no_grad():
            model.text_projection.weight.copy_(torch.eye(config.hidden_size))
    return model


def build_tiny_sd3_pipeline(kind: str, seed: int = 0) -> StableDiffusion3Pipeline:
    """The tiny pipeline of model type `kind` (a key of `LAYOUTS`)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline
    from transformers import T5Config, T5EncoderModel

    from onetrainer.util.tiny.models import seeded, text_config, tiny_vae
    from onetrainer.util.tiny.tokenizer import build_tiny_clip_tokenizer, build_tiny_t5_tokenizer

    tokenizer = build_tiny_clip_tokenizer()
    tokenizer_2 = build_tiny_clip_tokenizer()
    tokenizer_2.pad_token = "!"  # as SD 3's tokenizer_2: OpenCLIP bigG was trained padding with "!"
    tokenizer_3 = build_tiny_t5_tokenizer()
    clip_l = text_config(tokenizer, hidden_size=CLIP_L_WIDTH, hidden_act="quick_gelu", projection_dim=CLIP_L_WIDTH)
    clip_g = text_config(tokenizer, hidden_size=CLIP_G_WIDTH, hidden_act="gelu", projection_dim=CLIP_G_WIDTH)
    t5_config = T5Config(
        vocab_size=len(tokenizer_3),
        d_model=T5_WIDTH,
        d_kv=8,
        d_ff=40,
        num_layers=2,
        num_heads=4,
        feed_forward_proj="gated-gelu",
        is_encoder_decoder=False,
        use_cache=False,
        pad_token_id=tokenizer_3.pad_token_id,
        eos_token_id=tokenizer_3.eos_token_id,
    )
    heads, head_width = 4, 8
    transformer = seeded(
        seed,
        "transformer",
        lambda: SD3Transformer2DModel(
            sample_size=8,
            patch_size=2,
            in_channels=16,
            num_layers=2,
            attention_head_dim=head_width,
            num_attention_heads=heads,
            joint_attention_dim=T5_WIDTH,
            caption_projection_dim=heads * head_width,
            pooled_projection_dim=CLIP_L_WIDTH + CLIP_G_WIDTH,
            out_channels=16,
            pos_embed_max_size=16,
            **LAYOUTS[kind],
        ),
    )
    pipe = StableDiffusion3Pipeline(
        transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=SHIFT),
        vae=tiny_vae(seed, SCALING_FACTOR, latent_channels=16, shift_factor=SHIFT_FACTOR),
        text_encoder=_clip(seed, "text_encoder", clip_l, identity=True),
        tokenizer=tokenizer,
        text_encoder_2=_clip(seed, "text_encoder_2", clip_g, identity=False),
        tokenizer_2=tokenizer_2,
        text_encoder_3=seeded(seed, "text_encoder_3", lambda: T5EncoderModel(t5_config)),
        tokenizer_3=tokenizer_3,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe
