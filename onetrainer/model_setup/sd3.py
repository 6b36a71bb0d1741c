"""The SD 3 hooks of the shared diffusion setup: three-encoder conditioning and the MMDiT call.

Conditioning, as diffusers' `StableDiffusion3Pipeline.encode_prompt` computes it: CLIP ViT-L and
OpenCLIP bigG each read the caption (77 tokens, padded and cut; bigG pads with "!") and give their
penultimate hidden states (`layer_skip` more layers back, without the final layer norm) and their pooled
outputs; T5 reads it again (up to `model.options.t5_max_length` tokens, padded to that length) and gives
its last hidden states. CLIP-L's pooled output is read unprojected, as Stability's and ComfyUI's code
read it: diffusers' CLIP-L carries an identity projection (its single-file reader sets one), so both
agree, and a fine-tune never moves that projection, which the original files do not hold. Trained
embeddings are looked up in all three.

The encoders' outputs are kept apart (`CLIP_L`, `CLIP_G`, `T5` keys), so one encoder's conditioning can be
dropped by zeroing its keys (`parts.<encoder>.dropout`), and assembled for the transformer as the
pipeline does: the CLIP states concatenated along the width and zero-padded to the transformer's
`joint_attention_dim`, then T5's states after them along the sequence (zeros of T5's length when the
model has no T5); the pooled outputs concatenated (CLIP-L first). The MMDiT takes the latents as they are
(it patches them itself) and the time as 1000 * sigma, as the pipeline passes the scheduler's timesteps.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from onetrainer.model.sd3 import T5, sd3_options
from onetrainer.model_setup.conditioning import TextConditioner
from onetrainer.model_setup.diffusion import DiffusionSetup
from onetrainer.util.errors import UserError
from onetrainer.util.registry import ModuleKind, register

if TYPE_CHECKING:
    import torch

    from onetrainer.model.contracts import Batch
    from onetrainer.model.diffusion import DiffusionModel
    from onetrainer.util.config.schema import TrainConfig

CLIP_L, CLIP_G = "text_encoder", "text_encoder_2"
L_HIDDEN, L_POOLED = "clip_l_hidden", "clip_l_pooled"
"""[B, 77, 768] CLIP-L's penultimate states; [B, 768] its unprojected pooled output."""
G_HIDDEN, G_POOLED = "clip_g_hidden", "clip_g_pooled"
"""[B, 77, 1280] bigG's penultimate states; [B, 1280] its projected pooled output."""
T5_HIDDEN = "t5_hidden"
"""[B, L, 4096] T5's last hidden states, L = `t5_max_length`."""
SOURCES = {CLIP_L: (L_HIDDEN, L_POOLED), CLIP_G: (G_HIDDEN, G_POOLED), T5: (T5_HIDDEN,)}


def t5_max_length(model: DiffusionModel) -> int:
    return int(sd3_options(model.spec, model.options).t5_max_length)


def _clip(model: DiffusionModel, name: str, captions: list[str], skip: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(penultimate hidden states `skip` layers further back, pooled output) of one CLIP encoder."""
    from onetrainer.model.clip_text import tokenize

    encoder = model.components[name]
    ids = tokenize(model.tokenizer_for(name), captions, model.adapters.embeddings)
    ids = ids.to(next(encoder.parameters()).device, non_blocking=True)
    if name == CLIP_L:
        outputs = encoder.text_model(ids, output_hidden_states=True)
        pooled = outputs.pooler_output
    else:
        outputs = encoder(ids, output_hidden_states=True)
        pooled = outputs.text_embeds
    return outputs.hidden_states[-(2 + skip)], pooled


def encode_sd3(
    model: DiffusionModel, captions: list[str], skips: Mapping[str, int], max_length: int
) -> dict[str, torch.Tensor]:
    """Captions -> each encoder's tensors (`SOURCES`); no T5 key when the model has no T5."""
    from onetrainer.model.adapters.embedding import expand_placeholders, on_encoder

    l_hidden, l_pooled = _clip(model, CLIP_L, captions, int(skips.get(CLIP_L, 0)))
    g_hidden, g_pooled = _clip(model, CLIP_G, captions, int(skips.get(CLIP_G, 0)))
    outputs = {L_HIDDEN: l_hidden, L_POOLED: l_pooled, G_HIDDEN: g_hidden, G_POOLED: g_pooled}
    t5 = model.components.get(T5)
    if t5 is not None:
        embeddings = on_encoder(model.adapters.embeddings, T5)
        expanded = [expand_placeholders(caption, embeddings) for caption in captions]
        ids = model.tokenizer_for(T5)(
            expanded, padding="max_length", max_length=max_length, truncation=True, return_tensors="pt"
        ).input_ids
        outputs[T5_HIDDEN] = t5(ids.to(next(t5.parameters()).device, non_blocking=True), output_hidden_states=False)[0]
    return outputs


def assemble(
    model: DiffusionModel, conditioning: Mapping[str, torch.Tensor], device: torch.device, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """(prompt embeddings [B, 77 + L, joint width], pooled [B, pooled width]) from the encoders' tensors, as
    `StableDiffusion3Pipeline.encode_prompt` joins them."""
    import torch

    def moved(key: str) -> torch.Tensor:
        # each (pinned, from the cache) tensor to the device before joining: a joined CPU tensor is not pinned
        return conditioning[key].to(device, dtype, non_blocking=True)

    joint = int(model.denoiser.config.joint_attention_dim)
    clip = torch.cat([moved(L_HIDDEN), moved(G_HIDDEN)], dim=-1)
    clip = torch.nn.functional.pad(clip, (0, joint - clip.shape[-1]))
    if T5_HIDDEN in conditioning:
        t5 = moved(T5_HIDDEN)
    else:
        t5 = torch.zeros(clip.shape[0], t5_max_length(model), joint, device=device, dtype=dtype)
    prompt = torch.cat([clip, t5], dim=-2)
    pooled = torch.cat([moved(L_POOLED), moved(G_POOLED)], dim=-1)
    return prompt, pooled


class Sd3Conditioner(TextConditioner):
    """The shared conditioner, counting caption tokens against T5's limit where the model has T5."""

    def __init__(self, model: DiffusionModel, device: torch.device, skips: Mapping[str, int], max_length: int) -> None:
        self.max_length = max_length
        has_t5 = T5 in model.components

        def encode(model: DiffusionModel, captions: list[str]) -> dict[str, torch.Tensor]:
            return encode_sd3(model, captions, skips, max_length)

        keys = (L_HIDDEN, L_POOLED, G_HIDDEN, G_POOLED) + ((T5_HIDDEN,) if has_t5 else ())
        settings = f"penultimate-skip{skips.get(CLIP_L, 0)},{skips.get(CLIP_G, 0)}," + (
            f"t5-{max_length}" if has_t5 else "no-t5"
        )
        sources = {name: SOURCES[name] for name in model.text_encoder_names()}
        super().__init__(model, device, encode, output_keys=keys, settings=settings, sources=sources)

    def caption_token_counts(self, captions: list[str]) -> tuple[list[int], int]:
        """(T5 tokens per caption, the most T5 reads) with T5: it closes each text with `</s>`; CLIP's counts
        (75 of 77) without it."""
        if T5 not in self.model.components:
            return super().caption_token_counts(captions)
        from onetrainer.model.adapters.embedding import expand_placeholders, on_encoder

        tokenizer = self.model.tokenizer_for(T5)
        embeddings = on_encoder(self.model.adapters.embeddings, T5)
        expanded = [expand_placeholders(text, embeddings) for text in captions]
        ids = (
            tokenizer(expanded, add_special_tokens=False, truncation=False, verbose=False).input_ids if expanded else []
        )
        return [len(row) for row in ids], self.max_length - 1


class Sd3Hooks:
    def conditioner(
        self, model: DiffusionModel, *, layer_skip: Mapping[str, int], device: torch.device
    ) -> Sd3Conditioner:
        if layer_skip.get(T5):
            raise UserError(
                f"{model.spec.title} reads T5's last layer; layer_skip applies to its CLIP encoders only",
                where=f"parts.{T5}.layer_skip",
                hint="Leave layer_skip at 0 for T5.",
            )
        skips = {name: int(layer_skip.get(name, 0)) for name in (CLIP_L, CLIP_G)}
        return Sd3Conditioner(model, device, skips, t5_max_length(model))

    def denoise(
        self,
        model: DiffusionModel,
        noisy: torch.Tensor,
        timesteps: torch.Tensor,
        conditioning: Mapping[str, torch.Tensor],
        batch: Batch,
    ) -> torch.Tensor:
        dtype = model.denoiser_dtype
        device = noisy.device
        prompt, pooled = assemble(model, conditioning, device, dtype)
        prediction: torch.Tensor = model.denoiser(
            hidden_states=noisy.to(dtype),
            timestep=timesteps.to(device),
            encoder_hidden_states=prompt,
            pooled_projections=pooled,
            return_dict=False,
        )[0]
        return prediction

    def example_inputs(
        self, model: DiffusionModel, batch_size: int, height: int, width: int, device: torch.device | str
    ) -> tuple[dict[str, torch.Tensor], Batch]:
        """Each encoder's tensors of the shapes a training step feeds `denoise` (CLIP's 77 tokens, T5 padded
        to `t5_max_length`), for the memory estimate."""
        import torch

        def zeros(*shape: int) -> torch.Tensor:
            return torch.zeros(batch_size, *shape, device=device)

        clip_l, clip_g = model.components[CLIP_L].config, model.components[CLIP_G].config
        tokens = int(clip_l.max_position_embeddings)
        conditioning = {
            L_HIDDEN: zeros(tokens, int(clip_l.hidden_size)),
            L_POOLED: zeros(int(clip_l.hidden_size)),
            G_HIDDEN: zeros(tokens, int(clip_g.hidden_size)),
            G_POOLED: zeros(int(clip_g.projection_dim)),
        }
        t5 = model.components.get(T5)
        if t5 is not None:
            conditioning[T5_HIDDEN] = zeros(t5_max_length(model), int(t5.config.d_model))
        return conditioning, {}


def check_t5(model: DiffusionModel, config: TrainConfig) -> None:
    """A run may not train or drop T5 on a model left without it (`model.options.t5: false`)."""
    if T5 in model.components:
        return
    part = config.parts.get(T5)
    if part is not None and part.train:
        raise UserError(
            f"parts.{T5}.train is set, but this {model.spec.title} model has no T5 (model.options.t5 is false, or "
            "its source holds none)",
            where=f"parts.{T5}.train",
            hint="Train the CLIP encoders only, or load T5 (model.options.t5: true with a source that holds it).",
        )


@register(ModuleKind.SETUP, "sd35-large", "sd35-medium", "sd3-medium")
def sd3_setup(model: DiffusionModel, config: TrainConfig) -> DiffusionSetup:
    check_t5(model, config)
    return DiffusionSetup(model, config, Sd3Hooks())
