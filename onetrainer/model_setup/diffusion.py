"""The training setup every family shares: what trains, where it lives, and one step's prediction and loss.

`prepare` decides the trained tensors once (LoRA layers on the parts that train, whole parts for a
full fine-tune, embeddings on the text encoders that take them), applies the placement policy,
switches on gradient checkpointing and, last, the speed settings (channels-last, regional
compilation: `compile`), so that compiled blocks already hold their adapters; after that `predict`
and `loss` are pure functions of the batch and the generator (which also draws each text encoder's
conditioning dropout while training). What differs per family comes from its `FamilyHooks` (how
captions condition the denoiser, how the denoiser is called) and its objective (DDPM or flow matching).
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from onetrainer.model.adapters.dora import dora_axis
from onetrainer.model.adapters.embedding import EmbeddingAdapter, add_embedding, read_embedding_file
from onetrainer.model.adapters.lora import LoraAdapter, LoraTargets, adapters_disabled, inject_lora, load_lora_state
from onetrainer.model.adapters.lora_file import read_lora_file
from onetrainer.model.quantised import quiet_adapters
from onetrainer.model_setup.compile import compile_repeated_blocks, use_channels_last
from onetrainer.model_setup.encoders import VaeImageEncoder
from onetrainer.model_setup.loss import diffusion_loss
from onetrainer.model_setup.objective import Noised, TrainingObjective, build_objective
from onetrainer.model_setup.offload import activations_in_cpu_memory
from onetrainer.model_setup.placement import Placement, apply_placement, apply_storage, placement_policy
from onetrainer.model_setup.trainables import Trainables
from onetrainer.util.config.adapters import AdditionalEmbeddingConfig, EmbeddingConfig
from onetrainer.util.config.data import ConceptType
from onetrainer.util.config.output import SaveFormat
from onetrainer.util.config.types import CadenceUnit
from onetrainer.util.enums import TrainingMethod
from onetrainer.util.errors import UserError
from onetrainer.util.family import FamilySpec, Objective, Role

if TYPE_CHECKING:
    import torch

    from onetrainer.model.contracts import Batch, Conditioner, FamilyHooks, Share
    from onetrainer.model.diffusion import DiffusionModel
    from onetrainer.model_setup.offload import BlockOffloader
    from onetrainer.util.config.schema import TrainConfig

EMBEDDINGS_GROUP = "embeddings"
"""The parameter-group name of trained embedding vectors (beside the part names)."""


class DiffusionSetup:
    """A `TrainingSetup` for any family, given the family's hooks."""

    def __init__(self, model: DiffusionModel, config: TrainConfig, hooks: FamilyHooks) -> None:
        self.model = model
        self.config = config
        self.hooks = hooks
        self.trainables = Trainables()
        self.embeddings: list[EmbeddingAdapter] = []
        self.lora: LoraAdapter | None = None
        self.objective: TrainingObjective | None = None
        self.device: torch.device | None = None
        self.stopped: set[str] = set()
        self._vae_encoder: VaeImageEncoder | None = None
        self._conditioner: Conditioner | None = None
        self.policy: dict[str, Placement] = {}
        self.offloaders: dict[str, BlockOffloader] = {}
        self._prior_concepts = any(concept.type is ConceptType.PRIOR for concept in config.data.concepts)
        """Only then does a step look at a batch's `is_prior` flags (a read on the host, every step)."""
        self._training = True

    @property
    def spec(self) -> FamilySpec:
        return self.model.spec

    def trained_parts(self) -> list[str]:
        """The components whose weights (full) or adapters (lora) train, in the family's order."""
        if self.config.method is TrainingMethod.EMBEDDING:
            return []
        names = self.model.components
        return [name for name, part in self.config.parts.items() if part.train and name in names]

    # ----------------------------------------------------------------------------------- prepare
    def prepare(self, device: torch.device | str, dtype: torch.dtype) -> None:
        """Freeze, store, add adapters, place components (see `placement`): trained tensors take their dtype."""
        import torch

        model, config = self.model, self.config
        for _, module in model.modules():
            module.requires_grad_(False)
        if self.spec.objective is Objective.DDPM and config.noise.zero_terminal_snr:
            from onetrainer.model_setup.ddpm import zero_terminal_snr_scheduler
            from onetrainer.util.config.family import zero_terminal_snr_problems
            from onetrainer.util.errors import ConfigError

            if problems := zero_terminal_snr_problems(model.prediction_type):  # `auto` read from the model
                raise ConfigError(problems, hint=f"{config.model.base} predicts epsilon.")

            model.noise_scheduler = zero_terminal_snr_scheduler(model.noise_scheduler)
        self.device = torch.device(device)
        self.objective = build_objective(
            self.spec.objective, config, model.noise_scheduler, model.prediction_type, self.device
        )
        self.policy = placement_policy(model, config, self.device, dtype, full_parts=self._fully_trained())
        apply_storage(model, self.policy)

        if config.method is TrainingMethod.LORA:
            self._add_lora()
        elif config.method is TrainingMethod.FULL:
            for name in self.trained_parts():
                params = self._full_parameters(name)
                for param in params.values():
                    param.requires_grad_(True)
                self.trainables.add(name, params)
        self._add_embeddings()
        if not self.trainables.groups:
            raise UserError(
                "nothing to train with these settings",
                hint="Set parts.<name>.train to true for a part of this model, or use method: embedding.",
            )

        encoders = model.text_encoder_names()
        if config.data.cache and not any(self._backpropagates(name) for name in encoders):
            # Frozen text encoders serve the cache (and previews): their conditioner moves them to the device
            # for a caching pass and back, so a warm cache never holds them there (T5-XXL: 9.5 GB). Uncached
            # (no cache, or one of them or an embedding on one trains), they all run in every step: they stay
            # on the device, where the first step would otherwise wait for their copy.
            for name in encoders:
                self.policy[name] = dataclasses.replace(self.policy[name], device=torch.device("cpu"))
        if config.training.channels_last:
            use_channels_last(model.denoiser)
        self.offloaders = apply_placement(
            model, self.policy, self.trainables.parameter_lists(), fully_trained=self._fully_trained()
        )
        vae = self.spec.vae.name
        self._vae_encoder = VaeImageEncoder(
            model.components[vae], self.device, self.policy[vae].storage_dtype, part=vae
        )
        self._conditioner = self.hooks.conditioner(model, layer_skip=self._layer_skip(), device=self.device)
        self._checkpointing(config.training.gradient_checkpointing)
        if config.training.compile:  # on the prepared denoiser: adapters, placement and checkpointing set
            compile_repeated_blocks(model.denoiser)
        model.adapters.lora = self.lora
        model.adapters.embeddings = list(self.embeddings)

    def shard(self, shard_module: Callable[[torch.nn.Module], None]) -> list[torch.nn.Module]:
        """Hand each fully trained component to `shard_module` and train the parameters it leaves there.

        FSDP2's `fully_shard` (`trainer.sharding`) replaces a module's parameters by sharded ones, so the
        trained tensors recorded in `prepare` are taken again from the sharded components.
        """
        sharded = []
        for name in self._fully_trained():
            module = self.model.components[name]
            shard_module(module)
            self.trainables.groups[name] = self._full_parameters(name)
            sharded.append(module)
        return sharded

    def _full_parameters(self, name: str) -> dict[str, torch.nn.Parameter]:
        """A fully trained part's parameters, but those of layers whose output the model discards."""
        module = self.model.components[name]
        unused = self.spec.component(name).unused_in(module)
        return {
            key: param
            for key, param in module.named_parameters()
            if not any(key == layer or key.startswith(layer + ".") for layer in unused)
        }

    def _dropout(self) -> dict[str, float]:
        """Text encoder -> the chance its conditioning is dropped, for the encoders the model has that drop."""
        rates = {name: self.config.parts[name].dropout for name in self.model.text_encoder_names()}
        return {name: rate for name, rate in rates.items() if rate > 0}

    def _conditioning_kept(self, generator: torch.Generator, batch_size: int) -> dict[Share, torch.Tensor]:
        """Which samples keep each encoder's share of the conditioning (OneTrainer's text-encoder dropout): each
        sample loses each dropping encoder's shares with that encoder's chance, drawn from the step's generator
        after the objective's draws, encoder by encoder in the family's order. Empty when nothing drops."""
        import torch

        rates = self._dropout()
        if not rates or not self._training:
            return {}
        sources = self._require_conditioner().sources
        kept: dict[Share, torch.Tensor] = {}
        for name, rate in rates.items():
            keep = torch.rand(batch_size, generator=generator, device=generator.device) >= rate
            for share in sources[name]:
                kept[share] = keep & kept[share] if share in kept else keep
        return kept

    def _fully_trained(self) -> list[str]:
        return self.trained_parts() if self.config.method is TrainingMethod.FULL else []

    def _layer_skip(self) -> dict[str, int]:
        return {name: self.config.parts[name].layer_skip for name in self.model.text_encoder_names()}

    def inject_lora_adapter(self) -> LoraAdapter:
        """Add the configured LoRA (of `lora.type`) to the parts that train; the memory estimate calls it on
        modules built on the meta device."""
        lora = self.config.lora
        targets = {
            name: LoraTargets(
                preset=(self.config.parts[name].lora_targets or lora.targets).value,
                regex=self.config.parts[name].lora_regex or lora.regex,
                presets=self.spec.component(name).lora_presets,
                unused=self.spec.component(name).unused_in(self.model.components[name]),
            )
            for name in self.trained_parts()
        }
        with quiet_adapters():
            return inject_lora(
                self.model,
                kind=lora.type.value,
                rank=lora.rank,
                alpha=lora.alpha,
                targets=targets,
                dropout=lora.dropout,
                seed=self.config.training.seed,
                dora_axis=dora_axis(self._lora_format()),
            )

    def _add_lora(self) -> None:
        lora = self.config.lora
        parts = self.trained_parts()
        self.lora = self.inject_lora_adapter()
        if lora.init_from is not None:
            loaded = read_lora_file(lora.init_from, self.spec, configs=self.model.component_configs())
            load_lora_state(self.model, self.lora, loaded.tensors, loaded.alphas, source=str(lora.init_from))
        for name in parts:
            own = {id(param) for param in self.lora.parameters(self.model, name)}
            named = {key: param for key, param in self.model.components[name].named_parameters() if id(param) in own}
            for param in named.values():
                param.requires_grad_(True)
            self.trainables.add(name, named)

    def interop_warnings(self) -> list[str]:
        """What the LoRA being trained will lose in other tools, said before training starts."""
        if self.lora is None or self._lora_format() != "kohya":
            return []
        from onetrainer.util.keymaps.lora import split_peft_key

        warnings: list[str] = []
        for name, state in self.lora.state_dicts(self.model).items():
            setting = f"parts.{name}.lora_regex" if self.config.parts[name].lora_regex else "lora.regex"
            layers = {f"{name}.{split_peft_key(key)[0]}" for key in state}
            warnings += self.spec.all_or_none_warnings(layers, setting)
        return warnings

    def _lora_format(self) -> str:
        """The layout the LoRA will be saved in (`auto`: the family's for the parts that train, as the saver
        decides it)."""
        fmt = self.config.saving.format
        return self.spec.auto_lora_format_for(self.trained_parts()) if fmt is SaveFormat.AUTO else fmt.value

    def _add_embeddings(self) -> None:
        embedding = self.config.embedding
        specs: list[tuple[str, EmbeddingConfig | AdditionalEmbeddingConfig, bool]] = []
        if self.config.method is TrainingMethod.EMBEDDING:
            specs.append(("embedding", embedding, True))
        specs += [(f"embedding.additional.{index}", e, e.train) for index, e in enumerate(embedding.additional)]
        for key, settings, trainable in specs:
            vectors = read_embedding_file(settings.init_from, self.spec) if settings.init_from is not None else None
            added = add_embedding(
                self.model,
                settings.placeholder,
                count=settings.vectors,
                init_text=settings.init_text,
                vectors=vectors,
                trainable=trainable,
                where=f"{key}.placeholder",
            )
            self.embeddings.append(added)
            if trainable:
                self.trainables.add(EMBEDDINGS_GROUP, added.named_parameters())

    def _checkpointing(self, enabled: bool) -> None:
        """Gradient checkpointing on the denoiser and on the text encoders that backpropagate."""
        if not enabled:
            return
        self.model.denoiser.enable_gradient_checkpointing()
        for name in self.model.text_encoder_names():
            if self._backpropagates(name):
                self.model.components[name].gradient_checkpointing_enable(
                    gradient_checkpointing_kwargs={"use_reentrant": False}
                )

    def _backpropagates(self, encoder: str) -> bool:
        """Gradients flow through `encoder` while it trains or an embedding on it trains."""
        if encoder in self.stopped:
            return False
        trained_embedding = any(encoder in e.parameters and e.trainable for e in self.embeddings)
        return encoder in self.trainables.groups or trained_embedding

    # ------------------------------------------------------------------------- trainer interface
    def parameter_groups(self) -> list[dict[str, Any]]:
        """One optimizer group per trained part (and one for embeddings), each with its learning rate."""
        base = self.config.training.learning_rate
        rates = {name: part.learning_rate for name, part in self.config.parts.items()}
        rates[EMBEDDINGS_GROUP] = self.config.embedding.learning_rate
        return [
            {"name": name, "params": params, "lr": rates.get(name) or base}
            for name, params in self.trainables.parameter_lists().items()
        ]

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        return self.trainables.state_dict()

    def load_trainable_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.trainables.load_state_dict(state)

    def image_encoder(self) -> VaeImageEncoder:
        if self._vae_encoder is None:
            raise RuntimeError("call prepare() before using the setup")
        return self._vae_encoder

    def text_encoder(self) -> Conditioner | None:
        """None while a text encoder or an embedding on it trains: then captions are encoded in `predict`."""
        if any(self._backpropagates(name) for name in self.model.text_encoder_names()):
            return None
        return self._require_conditioner()

    def caption_token_counts(self, captions: list[str]) -> tuple[list[int], int]:
        return self._require_conditioner().caption_token_counts(captions)

    def _require_conditioner(self) -> Conditioner:
        if self._conditioner is None:
            raise RuntimeError("call prepare() before using the setup")
        return self._conditioner

    def _require_objective(self) -> TrainingObjective:
        if self.objective is None:
            raise RuntimeError("call prepare() before using the setup")
        return self.objective

    def image_seq_len(self, latents: torch.Tensor) -> int:
        """The denoiser's token count for these latents (what resolution-dependent shifts depend on)."""
        patch = self.spec.patch_size
        return int(latents.shape[-2] // patch) * int(latents.shape[-1] // patch)

    def predict(self, batch: Batch, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """Noise the batch's latents per the objective and run the denoiser on them."""
        vae = self.image_encoder()
        latents = batch.get("latents")
        if latents is None:
            vae.load()
            latents = vae.encode_on_device(batch["pixels"])
        latents = latents.to(self.device, non_blocking=True)
        conditioner = self._require_conditioner()
        conditioning = {key: batch[key] for key in conditioner.output_keys if key in batch}
        if len(conditioning) != len(conditioner.output_keys):
            conditioner.load()
            trained = self.text_encoder() is None  # (with gradients, under the step's autocast; else as cached)
            encode = conditioner.encode_for_training if trained else conditioner.encode_on_device
            conditioning = encode(list(batch["captions"]))
        noised: Noised = self._require_objective()(latents, generator, image_seq_len=self.image_seq_len(latents))
        kept = self._conditioning_kept(generator, int(latents.shape[0]))
        conditioning = _dropped(conditioning, kept)
        with self._memory_context():
            prediction = self.hooks.denoise(self.model, noised.noisy, noised.timesteps, conditioning, batch)
        target = noised.target
        prior = batch.get("is_prior") if self._prior_concepts else None
        if prior is not None and _any_on_host(prior):
            target = self._prior_target(noised, conditioning, batch, prior.to(target.device, non_blocking=True), kept)
        outputs = {"prediction": prediction, "target": target, "weights": noised.weights}
        masked = self.config.loss.masked
        if masked.enabled and masked.unmasked_probability > 0:
            outputs["unmasked"] = _draw(generator, int(latents.shape[0]), masked.unmasked_probability)
        return outputs

    def _prior_target(
        self,
        noised: Noised,
        conditioning: dict[str, torch.Tensor],
        batch: Batch,
        prior: torch.Tensor,
        kept: dict[Share, torch.Tensor],
    ) -> torch.Tensor:
        """Prior-preservation samples learn what the model without its LoRA predicts for the same input (their
        caption encoded without it too, and dropped where the trained pass's was); the others keep the
        objective's target."""
        import torch

        if self.lora is None:
            raise UserError("prior-preservation concepts need a LoRA to preserve the model from (method: lora)")
        with torch.no_grad(), adapters_disabled(self.model, self.lora):
            if self.text_encoder() is None:
                encoded = self._require_conditioner().encode_for_training(list(batch["captions"]))
                conditioning = _dropped(encoded, kept)
            with self._memory_context():
                base = self.hooks.denoise(self.model, noised.noisy, noised.timesteps, conditioning, batch)
        mask = prior.reshape(-1, *([1] * (noised.target.ndim - 1)))
        return torch.where(mask, base.float(), noised.target)

    def _memory_context(self) -> contextlib.ExitStack:
        """The denoiser's forward pass with its offloaders' context and, if asked, saved activations in CPU memory."""
        import torch

        stack = contextlib.ExitStack()
        for offloader in self.offloaders.values():
            stack.enter_context(offloader.forward_context())
        if self.config.training.activation_offload and torch.is_grad_enabled():
            pin = self.device is not None and self.device.type == "cuda"
            stack.enter_context(activations_in_cpu_memory(pin))
        return stack

    def loss(self, prediction: dict[str, torch.Tensor], batch: Batch) -> torch.Tensor:
        return diffusion_loss(
            prediction["prediction"],
            prediction["target"],
            prediction["weights"],
            self.config.loss,
            mask=batch.get("mask"),
            loss_weight=batch.get("loss_weight"),
            unmasked=prediction.get("unmasked"),
        )

    def on_step(self, step: int, epoch: int) -> None:
        """Freeze a part's trained tensors once its `parts.<name>.stop_after` is reached."""
        for name, part in self.config.parts.items():
            stop = part.stop_after
            if name in self.stopped or name not in self.trainables.groups or stop.unit is CadenceUnit.NEVER:
                continue
            if (step if stop.unit is CadenceUnit.STEP else epoch) < stop.every:
                continue
            for param in self.trainables.parameters(name):
                param.requires_grad_(False)
                param.grad = None
            self.stopped.add(name)
            self.model.components[name].eval()

    def train(self) -> None:
        self._training = True
        trained = set(self.trainables.groups) - self.stopped
        for name, module in self.model.modules():
            module.train(name in trained and self.spec.component(name).role is not Role.VAE)

    def eval(self) -> None:
        self._training = False
        for _, module in self.model.modules():
            module.eval()


def _draw(generator: torch.Generator, count: int, probability: float) -> torch.Tensor:
    """bool [count] on the generator's device, each True with `probability`: from the step's noise stream, so a
    resumed run draws what it would have."""
    import torch

    return torch.rand(count, device=generator.device, generator=generator) < probability


def _any_on_host(flags: torch.Tensor) -> bool:
    """Whether any of the loader's flags is set. They are in CPU memory, so reading them waits for no device;
    read outside a fake-tensor pass (the trainer's FLOP count), whose fake result could not be read at all."""
    from torch._subclasses.fake_tensor import unset_fake_temporarily

    with unset_fake_temporarily():
        return bool(flags.any())


def _dropped(conditioning: dict[str, torch.Tensor], kept: dict[Share, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`conditioning` with each share zeroed in the samples `kept` says lose it (moved to the masks' device, the
    step's: moving the masks to a cached tensor's CPU instead would wait for the GPU)."""
    import torch

    dropped = dict(conditioning)
    for share, keep in kept.items():
        tensor = dropped[share.key].to(keep.device, non_blocking=True)
        scale = keep.to(tensor.dtype).reshape(-1, *([1] * (tensor.ndim - 1)))
        if share.channels is not None:
            start, stop = share.channels
            channels = torch.zeros(tensor.shape[-1], dtype=torch.bool, device=keep.device)
            channels[start:stop] = True
            scale = torch.where(channels, scale, torch.ones((), dtype=tensor.dtype, device=keep.device))
        dropped[share.key] = tensor * scale
    return dropped
