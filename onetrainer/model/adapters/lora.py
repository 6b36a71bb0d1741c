"""LoRA-family adapters (LoRA, DoRA, LoHa, LoKr) injected into a model's components through peft.

The adapter layers live inside the denoiser / text encoders (peft wraps the targeted layers in place),
so a forward pass, a preview sample and a saver all see the adapted model. The `LoraAdapter` record is
what savers and the training setup need to find them again.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from onetrainer.model.adapters.dora import DORA_AXES, INPUT, use_input_axis
from onetrainer.model.adapters.targets import target_modules
from onetrainer.util.errors import UserError

if TYPE_CHECKING:
    import torch

    from onetrainer.model.diffusion import DiffusionModel

LORA_KINDS = ("lora", "dora", "loha", "lokr")


@dataclass(frozen=True)
class LoraTargets:
    """Which layers of one component get adapters: a preset of the component's table, or a regex."""

    preset: str = "attn-mlp"
    regex: str | None = None
    presets: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    unused: frozenset[str] = frozenset()
    """Layers whose output the model discards (`Component.unused_layers`): a preset leaves them out."""


@dataclass
class LoraAdapter:
    """One named peft adapter spread over several components of a model."""

    kind: str
    rank: int
    alpha: float
    components: tuple[str, ...]
    adapter_name: str = "default"
    dora_axis: str | None = None
    """For a DoRA, whether its magnitudes are per "input" column or per "output" row (see `dora`)."""

    def state_dicts(self, model: DiffusionModel) -> dict[str, dict[str, torch.Tensor]]:
        """Per component, the peft adapter state dict (keys as `get_peft_model_state_dict` names them)."""
        from peft import get_peft_model_state_dict

        return {
            component: get_peft_model_state_dict(model.components[component], adapter_name=self.adapter_name)
            for component in self.components
        }

    def parameters(self, model: DiffusionModel, component: str) -> list[torch.nn.Parameter]:
        """The adapter's trainable tensors on one component (peft names them `<layer>.<param>.<adapter>...`)."""
        if component not in self.components:
            return []
        marker = f".{self.adapter_name}"
        return [
            param
            for name, param in model.components[component].named_parameters()
            if f"{marker}." in name or name.endswith(marker)
        ]


def peft_config(kind: str, rank: int, alpha: float, dropout: float, targets: list[str]) -> Any:
    """The peft config of one adapter kind; dropout is input dropout for LoRA/DoRA, rank dropout for LyCORIS."""
    from peft import LoHaConfig, LoKrConfig, LoraConfig

    if kind in ("lora", "dora"):
        return LoraConfig(
            r=rank,
            lora_alpha=alpha,
            lora_dropout=dropout,
            target_modules=targets,
            use_dora=kind == "dora",
            init_lora_weights=True,
        )
    if kind == "loha":
        return LoHaConfig(r=rank, alpha=alpha, rank_dropout=dropout, target_modules=targets, init_weights=True)
    if kind == "lokr":
        return LoKrConfig(r=rank, alpha=alpha, rank_dropout=dropout, target_modules=targets, init_weights=True)
    raise UserError(f"unknown LoRA type {kind!r}", hint=f"Use one of: {', '.join(LORA_KINDS)}.")


def inject_lora(
    model: DiffusionModel,
    *,
    kind: str,
    rank: int,
    alpha: float,
    targets: Mapping[str, LoraTargets],
    dropout: float = 0.0,
    seed: int = 0,
    adapter_name: str = "default",
    dora_axis: str = INPUT,
) -> LoraAdapter:
    """Add a fresh adapter to each component of `targets` (zero update at first, as every LoRA starts).

    The initial random factors come from `seed` in a forked RNG, so the same config gives the same
    starting adapter no matter what ran before. Inject before moving the model to an accelerator.
    A DoRA normalises per `dora_axis`: "input" for the kohya layout, "output" for peft's (`dora.dora_axis`).
    """
    import torch
    from peft import inject_adapter_in_model

    if dora_axis not in DORA_AXES:
        raise UserError(f"unknown DoRA axis {dora_axis!r}", hint=f"Use one of: {', '.join(DORA_AXES)}.")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for component, chosen in targets.items():
            module = model.components[component]
            names = target_modules(module, component, chosen.presets, chosen.preset, chosen.regex, chosen.unused)
            if not names:
                raise UserError(f"the {component} has no layers for LoRA preset {chosen.preset!r}")
            inject_adapter_in_model(peft_config(kind, rank, alpha, dropout, names), module, adapter_name)
            if kind == "dora" and dora_axis == INPUT:
                use_input_axis(module, adapter_name)
    return LoraAdapter(
        kind=kind,
        rank=rank,
        alpha=alpha,
        components=tuple(targets),
        adapter_name=adapter_name,
        dora_axis=dora_axis if kind == "dora" else None,
    )


def load_lora_state(
    model: DiffusionModel,
    adapter: LoraAdapter,
    tensors: Mapping[str, torch.Tensor],
    alphas: Mapping[str, float],
    *,
    source: str,
) -> None:
    """Copy a LoRA file's weights (component-prefixed peft keys) into an injected adapter.

    Every layer of the file must exist in the adapter with the same shapes, so a file of another
    rank, kind or layer set is refused instead of half-loaded; adapter layers the file lacks keep
    their fresh (zero-update) start. Each layer's scale becomes the file's alpha / rank.
    """
    from peft import set_peft_model_state_dict
    from peft.tuners.tuners_utils import BaseTunerLayer

    from onetrainer.model.adapters.lora_file import matched_to
    from onetrainer.util.keymaps.lora import module_rank, split_peft_key

    tensors, alphas = matched_to(model, tensors, alphas)
    expected = {
        f"{component}.{key}": tensor
        for component, sd in adapter.state_dicts(model).items()
        for key, tensor in sd.items()
    }
    missing = sorted(key for key in tensors if key not in expected)
    if missing:
        magnitudes = all("lora_magnitude_vector" in key for key in missing)
        raise UserError(
            f"the LoRA file has {len(missing)} tensors this {adapter.kind} adapter does not, e.g. {missing[0]}",
            where=source,
            hint="The file's DoRA keeps its magnitudes on the other axis: kohya files per input column, peft "
            "files per output row; set saving.format to the file's layout."
            if magnitudes and adapter.kind == "dora"
            else "Match lora.type, lora.targets / lora.regex and the parts that train (parts.<name>.train) to "
            "the file.",
        )
    for key, tensor in tensors.items():
        if tuple(tensor.shape) != tuple(expected[key].shape):
            raise UserError(
                f"{key} has shape {tuple(tensor.shape)} in the file but {tuple(expected[key].shape)} here",
                where=source,
                hint=f"The file was trained with another rank; lora.rank is {adapter.rank}.",
            )
    modules: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in tensors.items():
        module, param = split_peft_key(key)
        modules.setdefault(module, {})[param] = tensor
    for component in adapter.components:
        prefix = f"{component}."
        own = {key.removeprefix(prefix): tensor for key, tensor in tensors.items() if key.startswith(prefix)}
        if not own:
            continue
        root = model.components[component]
        set_peft_model_state_dict(root, own, adapter_name=adapter.adapter_name)
        for name, layer in root.named_modules():
            params = modules.get(prefix + name)
            if params is None or not isinstance(layer, BaseTunerLayer):
                continue
            rank = module_rank(params)
            alpha = alphas.get(prefix + name)
            layer.scaling[adapter.adapter_name] = 1.0 if rank is None or alpha is None else alpha / rank


@contextlib.contextmanager
def adapters_disabled(model: DiffusionModel, adapter: LoraAdapter) -> Iterator[None]:
    """The model computes as its base weights alone inside the block (prior preservation's target).

    peft's `enable_adapters(True)` marks every active adapter as trainable again, so which tensors train
    (a part stopped by `stop_after` does not) is restored as it was.
    """
    from peft.tuners.tuners_utils import BaseTunerLayer

    layers: list[Any] = [
        layer
        for component in adapter.components
        for layer in model.components[component].modules()
        if isinstance(layer, BaseTunerLayer)
    ]
    trains = {param: param.requires_grad for layer in layers for param in layer.parameters()}
    for layer in layers:
        layer.enable_adapters(False)
    try:
        yield
    finally:
        for layer in layers:
            layer.enable_adapters(True)
        for param, requires_grad in trains.items():
            param.requires_grad_(requires_grad)
