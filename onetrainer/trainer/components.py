"""Assemble a run's parts from the registry: data loader -> model -> setup -> encoders, sampler, saver.

This is the only place that knows how the registered modules are called; the loop sees the
`TrainingParts` they become. Data-loader events are translated into the trainer's progress events.
Under torchrun, rank 0 scans the data first (the others then find its file records), and only rank 0
gets a sampler, unless the model is sharded: then every rank draws the previews with it.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from onetrainer.model_setup.placement import quantised_parts
from onetrainer.trainer.distributed import current_world, leaders_first
from onetrainer.trainer.parts import TrainingParts
from onetrainer.trainer.precision import torch_dtype
from onetrainer.trainer.session import ProgressCallback
from onetrainer.trainer.workspace import Workspace
from onetrainer.util.config.schema import TrainConfig
from onetrainer.util.errors import UserError
from onetrainer.util.family import get_family
from onetrainer.util.registry import ModuleKind, lookup

if TYPE_CHECKING:
    import torch

    from onetrainer.data_loader.loader import DataLoader
    from onetrainer.model.contracts import ModelLoader, SamplerFactory, Saver, SetupFactory, TrainingSetup
    from onetrainer.model.diffusion import DiffusionModel


def loader_events(progress: ProgressCallback) -> Any:
    """Adapt the data loader's `LoaderEvent`s to the trainer's event dicts."""

    def forward(event: Any) -> None:
        if event.kind == "warning":
            progress({"event": "warning", "stage": event.stage, "message": f"warning: {event.message}"})
        else:
            progress({"event": "cache", "stage": event.stage, "done": event.done, "total": event.total})

    return forward


def quantisation(config: TrainConfig) -> int:
    """The family's bucket side multiple, from its spec (no model is loaded for this)."""
    return get_family(config.model.type).bucket_step


def data_report(config: TrainConfig, *, progress: ProgressCallback, world_size: int = 1) -> Any:
    """The data loader's dataset report for `--dry-run` (for `world_size` ranks): reads the folders, writes nothing."""
    from onetrainer.data_loader import dataset_report

    return dataset_report(
        config, quantisation=quantisation(config), world_size=world_size, progress=loader_events(progress)
    )


def warn_cut_captions(data: DataLoader, setup: TrainingSetup, progress: ProgressCallback) -> None:
    """Say when captions are longer than the text encoder reads: the end of each is silently lost."""
    captions = data.captions()
    counts, limit = setup.caption_token_counts(list(captions))
    cut = [(count, path) for count, path in zip(counts, captions.values(), strict=True) if count > limit]
    if not cut:
        return
    longest, where = max(cut, key=lambda item: item[0])
    message = (
        f"warning: {len(cut)} of {len(captions)} distinct captions are longer than the {limit} tokens the text encoder "
        f"reads and are cut there (longest: {longest} tokens, {where.name}); put what matters first"
    )
    progress({"event": "warning", "stage": "captions", "message": message})


def check_largest_side(model: DiffusionModel, side: int) -> None:
    """A denoiser with a fixed positional table (SD 3) cannot take a bucket larger than it covers: refused
    before the cache fills, not at that bucket's first step."""
    limit = model.largest_side
    if limit is not None and side > limit:
        raise UserError(
            f"the data's buckets reach {side} px a side, more than the {limit} px this model's positional "
            "embedding covers",
            where="data.resolution",
            hint="Lower data.resolution (with bucketing, a 1:4 bucket's long side is about twice it) or set "
            "data.bucketing: false.",
        )


def build_parts(
    config: TrainConfig,
    *,
    device: torch.device,
    workspace: Workspace,
    rank: int,
    world_size: int,
    progress: ProgressCallback,
) -> TrainingParts:
    from onetrainer.data_loader import build_data_loader
    from onetrainer.util.config.family import family_warnings
    from onetrainer.util.config.training import DistributedMode

    if rank == 0:
        for message in family_warnings(config):
            progress({"event": "warning", "stage": "config", "message": f"warning: {message}"})
    with leaders_first(current_world(), "scanning the data"):
        data = build_data_loader(
            config,
            rank=rank,
            world_size=world_size,
            quantisation=quantisation(config),
            progress=loader_events(progress),
            pin_memory=device.type == "cuda",
        )
    every_rank = world_size > 1 and config.training.distributed is DistributedMode.FSDP
    model_type = config.model.type
    progress({"event": "status", "message": f"loading {model_type} model {config.model.base}"})
    try:
        loader: ModelLoader = lookup(ModuleKind.LOADER, model_type)()
        model = loader.load(config.model, device="cpu", quantise=quantised_parts(config, quantise_on=str(device)))
        make_setup: SetupFactory = lookup(ModuleKind.SETUP, model_type)
        check_largest_side(model, data.plan.largest_side())
        setup = make_setup(model, config)
        setup.prepare(device, torch_dtype(config.model.dtype))
        data.use_encoders(setup.image_encoder(), setup.text_encoder())
        if rank == 0:
            warn_cut_captions(data, setup, progress)
            for message in setup.interop_warnings():
                progress({"event": "warning", "stage": "config", "message": f"warning: {message}"})
    except BaseException:
        data.close()
        raise
    layer_skip = {name: part.layer_skip for name, part in config.parts.items()}
    make_sampler: SamplerFactory = lookup(ModuleKind.SAMPLER, model_type)
    sampler = make_sampler(model, layer_skip=layer_skip) if rank == 0 or every_rank else None
    saver: Saver = lookup(ModuleKind.SAVER, model_type)()

    def save_model(path: Path) -> Path:
        written = saver.save(
            model,
            path,
            method=config.method,
            format=config.saving.format,
            dtype=config.saving.dtype,
            config=config,
            overwrite=True,
        )
        return written[0]

    return TrainingParts(
        model=model,
        setup=setup,
        data=data,
        batches_in_epoch=data.steps_in_epoch,
        save_model=save_model,
        sampler=sampler,
        validation_batches=_validation(data, every_rank=every_rank) if _has_validation(config) else None,
        close=functools.partial(_close, data, setup),
    )


def _close(data: DataLoader, setup: TrainingSetup) -> None:
    """The loader's workers, then the frozen encoders: an uncached run's steps kept them on the device."""
    try:
        data.close()
    finally:
        for encoder in (setup.image_encoder(), setup.text_encoder()):
            if encoder is not None:
                encoder.unload()


def _validation(data: DataLoader, *, every_rank: bool) -> Callable[[], Iterator[tuple[int, dict[str, Any]]]]:
    """The validation batches: each rank's share, or all of them on every rank of a sharded model (its
    forward passes need every rank, so all must run as many)."""
    return functools.partial(data.validation_batches, every_rank=every_rank)


def _has_validation(config: TrainConfig) -> bool:
    from onetrainer.util.config.data import ConceptType

    return any(concept.enabled and concept.type is ConceptType.VALIDATION for concept in config.data.concepts)
