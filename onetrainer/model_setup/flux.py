"""The FLUX.1 hooks of the shared diffusion setup: CLIP-L pooled + T5 conditioning, the packed transformer call.

Conditioning, as diffusers' `FluxPipeline.encode_prompt` computes it: CLIP ViT-L reads each caption
(77 tokens, padded and cut) and gives its pooled output (`pooler_output`, no projection) [B, 768]; T5
reads it again (up to `model.options.t5_max_length` tokens, padded to that length with `<pad>`, `</s>`
closing it) and gives its last hidden states [B, L, 4096]. Trained embeddings are looked up in both.

The transformer sees the 16-channel latents [B, 16, h, w] as a sequence of 2x2 patches [B, hw/4, 64]
with position ids (0, row, column) per patch and (0, 0, 0) per text token, its time input as sigma
(diffusers multiplies by 1000 inside), and dev's guidance scale (`model.options.guidance`, 1.0 by
default: what the reference trainers give a guidance-distilled model). Its output is unpacked to
[B, 16, h, w], the flow-matching target's layout (noise - x0).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from onetrainer.model.flux import flux_options
from onetrainer.model_setup.conditioning import TextConditioner
from onetrainer.model_setup.diffusion import DiffusionSetup
from onetrainer.util.errors import UserError
from onetrainer.util.registry import ModuleKind, register

if TYPE_CHECKING:
    import torch

    from onetrainer.model.contracts import Batch
    from onetrainer.model.diffusion import DiffusionModel
    from onetrainer.util.config.schema import TrainConfig

TEXT_KEY = "t5_hidden"
"""[B, L, 4096]: T5's last hidden states, L = `t5_max_length`."""
POOLED_KEY = "pooled"
"""[B, 768]: CLIP-L's pooled output."""
CLIP, T5 = "text_encoder", "text_encoder_2"
PATCH = 2


def t5_max_length(model: DiffusionModel) -> int:
    return int(flux_options(model.spec, model.options).t5_max_length)


def encode_flux(model: DiffusionModel, captions: list[str], max_length: int) -> dict[str, torch.Tensor]:
    """Captions -> {TEXT_KEY, POOLED_KEY}, as `FluxPipeline.encode_prompt` does (no attention mask)."""
    from onetrainer.model.adapters.embedding import expand_placeholders
    from onetrainer.model.clip_text import tokenize

    embeddings = model.adapters.embeddings
    clip = model.components[CLIP]
    # Without blocking: inside a training step (a text encoder that trains) a blocking copy waits for the GPU.
    ids = tokenize(model.tokenizer_for(CLIP), captions, embeddings)
    ids = ids.to(next(clip.parameters()).device, non_blocking=True)
    pooled = clip(ids, output_hidden_states=False).pooler_output
    t5 = model.components[T5]
    expanded = [expand_placeholders(caption, embeddings) for caption in captions]
    t5_ids = model.tokenizer_for(T5)(
        expanded, padding="max_length", max_length=max_length, truncation=True, return_tensors="pt"
    ).input_ids
    hidden = t5(t5_ids.to(next(t5.parameters()).device, non_blocking=True), output_hidden_states=False)[0]
    return {TEXT_KEY: hidden, POOLED_KEY: pooled}


class FluxConditioner(TextConditioner):
    """The shared conditioner, counting caption tokens against T5's limit (CLIP's 77 are cut by design)."""

    def __init__(self, model: DiffusionModel, device: torch.device, max_length: int) -> None:
        self.max_length = max_length

        def encode(model: DiffusionModel, captions: list[str]) -> dict[str, torch.Tensor]:
            return encode_flux(model, captions, max_length)

        super().__init__(
            model,
            device,
            encode,
            output_keys=(TEXT_KEY, POOLED_KEY),
            settings=f"clip-pooled,t5-{max_length}",
            sources={CLIP: (POOLED_KEY,), T5: (TEXT_KEY,)},
        )

    def caption_token_counts(self, captions: list[str]) -> tuple[list[int], int]:
        """(T5 tokens per caption, the most T5 reads): T5 closes each text with `</s>` and has no start token."""
        from onetrainer.model.adapters.embedding import expand_placeholders

        tokenizer = self.model.tokenizer_for(T5)
        expanded = [expand_placeholders(text, self.model.adapters.embeddings) for text in captions]
        ids = (
            tokenizer(expanded, add_special_tokens=False, truncation=False, verbose=False).input_ids if expanded else []
        )
        return [len(row) for row in ids], self.max_length - 1


def pack(latents: torch.Tensor) -> torch.Tensor:
    """[B, C, h, w] -> [B, (h/2)(w/2), 4C]: row-major 2x2 patches, channels before the patch's positions
    (diffusers' `FluxPipeline._pack_latents`)."""
    b, c, h, w = latents.shape
    patches = latents.view(b, c, h // PATCH, PATCH, w // PATCH, PATCH).permute(0, 2, 4, 1, 3, 5)
    return patches.reshape(b, (h // PATCH) * (w // PATCH), c * PATCH * PATCH)


def unpack(tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """The inverse of `pack`, for latents of `height` x `width`."""
    b, _, packed = tokens.shape
    c = packed // (PATCH * PATCH)
    patches = tokens.view(b, height // PATCH, width // PATCH, c, PATCH, PATCH).permute(0, 3, 1, 4, 2, 5)
    return patches.reshape(b, c, height, width)


def image_ids(height: int, width: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """[(h/2)(w/2), 3] position ids of the packed latents: (0, patch row, patch column)."""
    import torch

    ids = torch.zeros(height // PATCH, width // PATCH, 3, device=device, dtype=dtype)
    ids[..., 1] = torch.arange(height // PATCH, device=device, dtype=dtype)[:, None]
    ids[..., 2] = torch.arange(width // PATCH, device=device, dtype=dtype)[None, :]
    return ids.reshape(-1, 3)


class FluxHooks:
    def conditioner(
        self, model: DiffusionModel, *, layer_skip: Mapping[str, int], device: torch.device
    ) -> FluxConditioner:
        skipped = sorted(name for name, skip in layer_skip.items() if skip)
        if skipped:
            raise UserError(
                f"{model.spec.title} reads CLIP-L's pooled output and T5's last layer; layer_skip does not apply",
                where=f"parts.{skipped[0]}.layer_skip",
                hint="Leave layer_skip at 0 (clip skip 1) for this model.",
            )
        return FluxConditioner(model, device, t5_max_length(model))

    def denoise(
        self,
        model: DiffusionModel,
        noisy: torch.Tensor,
        timesteps: torch.Tensor,
        conditioning: Mapping[str, torch.Tensor],
        batch: Batch,
    ) -> torch.Tensor:
        import torch

        transformer = model.denoiser
        dtype = model.denoiser_dtype
        device = noisy.device
        batch_size, _, height, width = noisy.shape
        text = conditioning[TEXT_KEY].to(device, dtype, non_blocking=True)
        guidance: Any = None
        if transformer.config.guidance_embeds:
            value = float(flux_options(model.spec, model.options).guidance)
            guidance = torch.full((batch_size,), value, device=device, dtype=torch.float32)
        prediction = transformer(
            hidden_states=pack(noisy.to(dtype)),
            timestep=(timesteps / 1000).to(device),
            guidance=guidance,
            pooled_projections=conditioning[POOLED_KEY].to(device, dtype, non_blocking=True),
            encoder_hidden_states=text,
            txt_ids=torch.zeros(text.shape[1], 3, device=device, dtype=dtype),
            img_ids=image_ids(height, width, device, dtype),
            return_dict=False,
        )[0]
        return unpack(prediction, height, width)

    def example_inputs(
        self, model: DiffusionModel, batch_size: int, height: int, width: int, device: torch.device | str
    ) -> tuple[dict[str, torch.Tensor], Batch]:
        """Conditioning of the shapes a training step feeds `denoise` (T5 padded to `t5_max_length`), for the
        memory estimate."""
        import torch

        config = model.denoiser.config
        conditioning = {
            TEXT_KEY: torch.zeros(batch_size, t5_max_length(model), int(config.joint_attention_dim), device=device),
            POOLED_KEY: torch.zeros(batch_size, int(config.pooled_projection_dim), device=device),
        }
        return conditioning, {}


def check_kohya_layout(model: DiffusionModel, config: TrainConfig) -> None:
    """Refuse, before any step, a DoRA or LoKr on layers BFL's files fuse (q, k, v) that will be saved in the
    kohya layout, which has no exact form for them (`util.keymaps.flux_lora`); a LoKr on the final
    modulation layer neither (its rows swap halves)."""
    from onetrainer.model.adapters.targets import target_modules
    from onetrainer.util.config.output import SaveFormat
    from onetrainer.util.enums import TrainingMethod
    from onetrainer.util.keymaps.flux_lora import LORA_NAMING
    from onetrainer.util.keymaps.flux_single_file import SWAPPED

    kind = config.lora.type.value
    kohya = config.saving.format in (SaveFormat.AUTO, SaveFormat.KOHYA)
    part = config.parts.get("transformer")
    if (
        config.method is not TrainingMethod.LORA
        or kind not in ("dora", "lokr")
        or not kohya
        or not part
        or not part.train
    ):
        return
    component = model.spec.denoiser
    chosen = target_modules(
        model.denoiser,
        component.name,
        component.lora_presets,
        (part.lora_targets or config.lora.targets).value,
        part.lora_regex or config.lora.regex,
    )
    fused = {p for layer in LORA_NAMING.for_model(model.component_configs()).layout.fused() for p in layer.parts}
    if kind == "lokr":
        fused |= {path for path, _ in SWAPPED}
    clashing = sorted(name for name in chosen if name in fused)
    if clashing:
        raise UserError(
            f"a {'LoKr' if kind == 'lokr' else 'DoRA'} on {clashing[0]} (and {len(clashing) - 1} more layers "
            "that BFL's files fuse) has no exact form in the kohya layout this run saves",
            where="saving.format",
            hint="Save as peft (diffusers keys, which diffusers computes a DoRA from exactly; ComfyUI ignores its "
            "magnitudes there), use lora or loha, or leave the attention projections out of the targets (lora.regex)."
            if kind == "dora"
            else "Use lora or loha (a LoKr saves in the kohya layout only), or leave the attention projections "
            "and the final modulation out of the targets (lora.regex).",
        )


@register(ModuleKind.SETUP, "flux-dev", "flux-schnell")
def flux_setup(model: DiffusionModel, config: TrainConfig) -> DiffusionSetup:
    check_kohya_layout(model, config)
    return DiffusionSetup(model, config, FluxHooks())
