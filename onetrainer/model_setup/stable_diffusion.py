"""Training setup for Stable Diffusion 1.x and 2.x: what trains, and one step's prediction and loss.

`prepare` decides the trainable tensors once (LoRA layers, full weights, embeddings) and places
every component; after that, `predict` and `loss` are pure functions of the batch and the
generator. The noise math and loss live in `noise.py` / `loss.py`, shared with SDXL.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from onetrainer.model.adapters.dora import dora_axis
from onetrainer.model.adapters.embedding import EmbeddingAdapter, add_embedding, read_embedding_file
from onetrainer.model.adapters.lora import LoraAdapter, inject_lora, load_lora_state
from onetrainer.model.adapters.lora_file import read_lora_file
from onetrainer.model_setup.encoders import ClipTextEncoder, VaeImageEncoder, place
from onetrainer.model_setup.loss import diffusion_loss
from onetrainer.model_setup.noise import Noiser, snr
from onetrainer.model_setup.trainables import Trainables
from onetrainer.util.config.types import CadenceUnit
from onetrainer.util.enums import ModelType, TrainingMethod
from onetrainer.util.errors import UserError
from onetrainer.util.registry import ModuleKind, register

if TYPE_CHECKING:
    import torch

    from onetrainer.model.stable_diffusion import StableDiffusionModel
    from onetrainer.util.config.schema import TrainConfig


@register(ModuleKind.SETUP, ModelType.SD15, ModelType.SD2)
class StableDiffusionSetup:
    quantisation = 8
    """Bucket sides are multiples of the VAE's downscale factor, so latents have whole sizes."""

    def __init__(self, model: StableDiffusionModel, config: TrainConfig) -> None:
        self.model = model
        self.config = config
        self.trainables = Trainables()
        self.embeddings: list[EmbeddingAdapter] = []
        self.lora: LoraAdapter | None = None
        self.noiser: Noiser | None = None
        self.device: torch.device | None = None
        self.text_encoder_stopped = False
        self._vae_encoder: VaeImageEncoder | None = None

    # ----------------------------------------------------------------------------------- prepare
    def prepare(self, device: torch.device | str, dtype: torch.dtype) -> None:
        """Freeze, add adapters, place components; trained tensors stay float32, frozen ones take `dtype`."""
        import torch

        model, config = self.model, self.config
        for module in (model.unet, model.text_encoder, model.vae):
            module.requires_grad_(False)
        if config.noise.zero_terminal_snr:
            self._use_zero_terminal_snr()
        self.noiser = Noiser(config.noise, model.noise_scheduler.alphas_cumprod, model.prediction_type)

        if config.method is TrainingMethod.LORA:
            self._add_lora()
        elif config.method is TrainingMethod.FULL:
            if config.parts.unet.train:
                self.trainables.add("unet", self._requires_grad(model.unet))
            if config.parts.text_encoder.train:
                self.trainables.add("text_encoder", self._requires_grad(model.text_encoder))
        self._add_embeddings()
        if not self.trainables.groups:
            raise UserError(
                "nothing to train with these settings",
                hint="For method: full, set parts.unet.train or parts.text_encoder.train to true.",
            )

        self.device = torch.device(device)
        weight_dtypes = self._weight_dtypes(dtype)
        for name in ("unet", "text_encoder", "vae"):
            place(getattr(model, name), self.device, weight_dtypes[name])
        for part in self.trainables.groups:
            for param in self.trainables.parameters(part):
                param.data = param.data.to(self.device, torch.float32)
        self._vae_encoder = VaeImageEncoder(model.vae, self.device, weight_dtypes["vae"])
        self._speed_up(config.training.gradient_checkpointing)

        if self.lora is not None:
            model.adapters["lora"] = self.lora
        if self.embeddings:
            model.adapters["embeddings"] = list(self.embeddings)

    def _weight_dtypes(self, dtype: torch.dtype) -> dict[str, torch.dtype]:
        """Frozen parts in `dtype` (or their `training.weight_dtypes` entry); fully trained parts float32."""
        import torch

        by_name = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
        chosen = dict.fromkeys(("unet", "text_encoder", "vae"), dtype)
        for name, precision in self.config.training.weight_dtypes.items():
            if name in chosen:
                chosen[name] = by_name[precision.value]
        if self.config.method is TrainingMethod.FULL:
            for part in self.trainables.groups:
                if part in chosen:
                    chosen[part] = torch.float32
        return chosen

    @staticmethod
    def _requires_grad(module: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
        module.requires_grad_(True)
        return dict(module.named_parameters())

    def _use_zero_terminal_snr(self) -> None:
        """Rescale the model's own schedule, so previews and saved scheduler configs match training."""
        from diffusers import DDPMScheduler

        self.model.noise_scheduler = DDPMScheduler.from_config(
            self.model.noise_scheduler.config, rescale_betas_zero_snr=True, timestep_spacing="trailing"
        )

    def _add_lora(self) -> None:
        lora = self.config.lora
        components = ("unet", "text_encoder") if lora.train_text_encoder else ("unet",)
        self.lora = inject_lora(
            self.model,
            kind=lora.type.value,
            rank=lora.rank,
            alpha=lora.alpha,
            components=components,
            preset=lora.targets.value,
            regex=lora.regex,
            dropout=lora.dropout,
            seed=self.config.training.seed,
            dora_axis=dora_axis(self.config.saving.format),
        )
        if lora.init_from is not None:
            loaded = read_lora_file(lora.init_from, self.model.model_type.value)
            load_lora_state(self.model, self.lora, loaded.tensors, loaded.alphas, source=str(lora.init_from))
        for component in components:
            own = {id(param) for param in self.lora.parameters(self.model, component)}
            named = {
                name: param for name, param in getattr(self.model, component).named_parameters() if id(param) in own
            }
            for param in named.values():
                param.requires_grad_(True)
            self.trainables.add(component, named)

    def _add_embeddings(self) -> None:
        embedding = self.config.embedding
        family = self.model.model_type.value
        specs: list[tuple[str, int, str, Any, bool]] = []
        if self.config.method is TrainingMethod.EMBEDDING:
            specs.append((embedding.placeholder, embedding.vectors, embedding.init_text, embedding.init_from, True))
        specs += [(e.placeholder, e.vectors, e.init_text, e.init_from, e.train) for e in embedding.additional]
        for placeholder, count, init_text, init_from, trainable in specs:
            vectors = read_embedding_file(init_from, family) if init_from is not None else None
            added = add_embedding(
                self.model, placeholder, count=count, init_text=init_text, vectors=vectors, trainable=trainable
            )
            self.embeddings.append(added)
            if trainable:
                self.trainables.add("embeddings", {placeholder: added.parameter})

    def _speed_up(self, checkpointing: bool) -> None:
        """SDPA attention everywhere; gradient checkpointing on the parts that backpropagate."""
        from diffusers.models.attention_processor import AttnProcessor2_0

        self.model.unet.set_attn_processor(AttnProcessor2_0())
        if not checkpointing:
            return
        self.model.unet.enable_gradient_checkpointing()
        if self._text_encoder_backpropagates():
            self.model.text_encoder.gradient_checkpointing_enable(
                gradient_checkpointing_kwargs={"use_reentrant": False}
            )

    def _text_encoder_backpropagates(self) -> bool:
        return "text_encoder" in self.trainables.groups or any(e.parameter.requires_grad for e in self.embeddings)

    # ------------------------------------------------------------------------- trainer interface
    def parameter_groups(self) -> list[dict]:
        return self.trainables.parameter_groups(self.config.training.learning_rate)

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        return self.trainables.state_dict()

    def load_trainable_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.trainables.load_state_dict(state)

    def image_encoder(self) -> VaeImageEncoder:
        return self._require_prepared()

    def text_encoder(self) -> ClipTextEncoder | None:
        """None while the text encoder or an embedding trains: then captions are encoded in `predict`."""
        if self._text_encoder_backpropagates() and not self.text_encoder_stopped:
            return None
        return self._clip_encoder()

    def caption_token_counts(self, captions: list[str]) -> tuple[list[int], int]:
        """(tokens in each caption, the most the text encoder reads): the trainer warns about cut captions."""
        from onetrainer.model.clip_text import caption_token_counts

        return caption_token_counts(self.model.tokenizer, captions, self.embeddings)

    def _clip_encoder(self) -> ClipTextEncoder:
        vae = self._require_prepared()
        return ClipTextEncoder(
            self.model.text_encoder,
            self.model.tokenizer,
            vae.device,
            next(self.model.text_encoder.parameters()).dtype,
            clip_skip=self.config.model.clip_skip,
            embeddings=lambda: self.embeddings,
        )

    def _require_prepared(self) -> VaeImageEncoder:
        if self._vae_encoder is None or self.noiser is None:
            raise RuntimeError("call prepare() before using the setup")
        return self._vae_encoder

    def predict(self, batch: dict[str, Any], generator: torch.Generator) -> dict[str, torch.Tensor]:
        """Noise the batch's latents at sampled timesteps and run the UNet on them."""
        from onetrainer.model.clip_text import encode_tokens, tokenize

        vae = self._require_prepared()
        latents = batch.get("latents")
        if latents is None:
            vae.load()
            latents = vae.encode_tensor(batch["pixels"])
        latents = latents.to(self.device)
        text = batch.get("text_hidden")
        if text is None:
            place(self.model.text_encoder, self.device)
            ids = tokenize(self.model.tokenizer, list(batch["captions"]), self.embeddings)
            text = encode_tokens(self.model.text_encoder, ids, self.config.model.clip_skip)
        noised = self.noiser(latents, generator)
        dtype = self.model.unet_dtype
        prediction = self.model.unet(
            noised.noisy.to(dtype), noised.timesteps, encoder_hidden_states=text.to(self.device, dtype)
        ).sample
        return {"prediction": prediction, "target": noised.target, "timesteps": noised.timesteps}

    def loss(self, prediction: dict[str, torch.Tensor], batch: dict[str, Any]) -> torch.Tensor:
        noiser = self.noiser
        if noiser is None:
            raise RuntimeError("call prepare() before using the setup")
        return diffusion_loss(
            prediction["prediction"],
            prediction["target"],
            snr(prediction["timesteps"], noiser.alphas_cumprod),
            self.config.loss,
            noiser.prediction_type,
            mask=batch.get("mask"),
            loss_weight=batch.get("loss_weight"),
        )

    def on_step(self, step: int, epoch: int) -> None:
        """Freeze the text encoder's trained tensors once `parts.text_encoder.stop_after` is reached."""
        stop = self.config.parts.text_encoder.stop_after
        if self.text_encoder_stopped or stop.unit is CadenceUnit.NEVER:
            return
        reached = step >= stop.every if stop.unit is CadenceUnit.STEP else epoch >= stop.every
        if not reached:
            return
        for param in self.trainables.parameters("text_encoder"):
            param.requires_grad_(False)
            param.grad = None
        self.text_encoder_stopped = True
        self.model.text_encoder.eval()

    def train(self) -> None:
        self.model.vae.eval()
        self.model.unet.train("unet" in self.trainables.groups)
        self.model.text_encoder.train("text_encoder" in self.trainables.groups and not self.text_encoder_stopped)

    def eval(self) -> None:
        for module in (self.model.unet, self.model.text_encoder, self.model.vae):
            module.eval()
