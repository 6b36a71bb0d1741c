"""`onetrainer sample MODEL --prompt TEXT`: generate images with a base model, LoRAs and embeddings."""

from __future__ import annotations

import math
import secrets
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from onetrainer.commands.options import (
    DEFAULT_DEVICE,
    Device,
    DtypeHalfOnGpu,
    ModelType,
    keys_as_options,
    number_option,
)
from onetrainer.model_sampler.sizes import MAX_SIDE
from onetrainer.util.devices import WeightsDtype
from onetrainer.util.errors import UserError
from onetrainer.util.family import Objective

if TYPE_CHECKING:
    from onetrainer.model.adapters.embedding import EmbeddingAdapter
    from onetrainer.model.diffusion import DiffusionModel
    from onetrainer.util.config.model import ModelConfig

MAX_SEED = 2**64 - 1
"""The largest seed torch's generators take (an unsigned 64-bit number)."""

EXAMPLES = (
    ("one image from a model file", 'onetrainer sample model.safetensors -p "a red circle" -o red.png'),
    (
        "four images (seeds 7 to 10) with a LoRA at 0.8 into a folder",
        'onetrainer sample model.safetensors -p "a photo of sks dog" --lora my-lora.safetensors:0.8 '
        "--seed 7 --count 4 -o samples/",
    ),
    (
        "a wide image with an embedding as its trigger word",
        'onetrainer sample model.safetensors -p "a house, my-style" --embedding my-style.safetensors '
        "--width 768 --height 512 --scheduler euler-a",
    ),
)
MODEL_WHERE = {"model.base": "the MODEL argument", "model.config": "--config", "model.options": "--option"}
"""The loaders name their sources by config key; here they come from these arguments."""
CLI_SCHEDULERS = {Objective.DDPM: "dpm++2m-karras", Objective.FLOW_MATCHING: "euler"}
"""`--scheduler`'s default for models of each training objective."""


def sample(
    model: Annotated[
        str,
        typer.Argument(
            metavar="MODEL",
            help="Base model: diffusers folder, .safetensors/.ckpt file, hub id, or tiny:<name> (a built-in "
            "random-weight model for quick tests; an unknown name lists them).",
        ),
    ],
    prompt: Annotated[str, typer.Option("--prompt", "-p", help="What to draw.")],
    negative_prompt: Annotated[str, typer.Option("--negative-prompt", "-n", help="What to steer away from.")] = "",
    lora: Annotated[
        list[str] | None,
        typer.Option(
            "--lora", metavar="FILE[:SCALE]", help="LoRA file, optionally with a strength (default 1). Repeatable."
        ),
    ] = None,
    embedding: Annotated[
        list[Path] | None,
        typer.Option(
            "--embedding", metavar="FILE", help="Embedding file; its trigger word is the file name. Repeatable."
        ),
    ] = None,
    steps: Annotated[int, typer.Option("--steps", min=1, max=1000, help="Denoising steps.")] = 20,
    cfg: Annotated[float, number_option("--cfg", min=0.0, help="Classifier-free guidance scale.")] = 7.0,
    seed: Annotated[int | None, typer.Option("--seed", min=0, help="Noise seed (default: random, printed).")] = None,
    width: Annotated[
        int | None,
        typer.Option(
            "--width",
            help=f"Width in pixels: a multiple of the model's step (8; 16 for patched transformers), "
            f"at most {MAX_SIDE} (default: the model's).",
        ),
    ] = None,
    height: Annotated[
        int | None,
        typer.Option(
            "--height",
            help=f"Height in pixels: a multiple of the model's step (8; 16 for patched transformers), "
            f"at most {MAX_SIDE} (default: the model's).",
        ),
    ] = None,
    scheduler: Annotated[
        str | None,
        typer.Option(
            "--scheduler",
            metavar="NAME",
            help="DDPM models: ddim, euler, euler-a, dpm++2m, dpm++2m-karras (default), unipc or ddpm; "
            "flow-matching models: euler (default), dpm++2m, unipc or deis.",
        ),
    ] = None,
    count: Annotated[
        int, typer.Option("--count", min=1, max=1000, help="Images to make (seeds seed, seed+1, ...).")
    ] = 1,
    output: Annotated[Path, typer.Option("--output", "-o", help="A .png file, or a folder for numbered files.")] = Path(
        "samples"
    ),
    model_type: ModelType = None,
    device: Device = DEFAULT_DEVICE,
    dtype: DtypeHalfOnGpu = WeightsDtype.AUTO,
    clip_skip: Annotated[
        int,
        typer.Option(
            "--clip-skip",
            min=1,
            max=12,
            help="Text-encoder layer, as A1111 counts: 1 = the model's own layer, 2 = one earlier "
            "(every text encoder read at a hidden layer; one read at its last layer or pooled output keeps it).",
        ),
    ] = 1,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing output file.")] = False,
    config: Annotated[
        str | None,
        typer.Option(
            "--config",
            metavar="PATH",
            help="For a single-file MODEL: its architecture, and the parts the file lacks (a transformer "
            "published alone needs its text encoders and VAE): a diffusers folder, hub id or tiny:<family>.",
        ),
    ] = None,
    family_options: Annotated[
        list[str] | None,
        typer.Option(
            "--option",
            metavar="KEY=VALUE",
            help="A model family option (model.options in a run config, e.g. t5_max_length=256). Repeatable.",
        ),
    ] = None,
) -> None:
    """Generate images; each PNG records its prompt, seed, steps, CFG, scheduler, model and LoRAs.

    Every option is checked before the model loads: sizes, files, the output folder, device and dtype.
    """
    from rich.markup import escape

    from onetrainer.model.adapters import merge_lora, read_lora_file
    from onetrainer.model_loader.family import size_step, source_model_type
    from onetrainer.model_sampler.clip_skip import clip_skip_layers
    from onetrainer.model_sampler.png import GenerationInfo, output_paths, save_png
    from onetrainer.model_sampler.schedulers import check_scheduler
    from onetrainer.model_sampler.sizes import check_side
    from onetrainer.ui.console import stderr, stdout
    from onetrainer.ui.file_progress import file_progress
    from onetrainer.util.detect import EMBEDDING, LORA, check_adapter_file
    from onetrainer.util.devices import resolve_device, resolve_dtype
    from onetrainer.util.family import get_family
    from onetrainer.util.missing import missing_path
    from onetrainer.util.registry import ModuleKind, lookup
    from onetrainer.util.threads import apply_threads
    from onetrainer.util.writable import check_writable

    if scheduler is not None:
        check_scheduler(scheduler)
    loras = [_parse_lora(spec) for spec in lora or []]
    for path, _ in loras:
        if path.is_dir():
            raise UserError(f"--lora {path} is a folder; give the LoRA file in it", where="--lora")
        if not path.is_file():
            raise missing_path(path, what="LoRA file", where="--lora")
    for path in embedding or []:
        if path.is_dir():
            raise UserError(f"--embedding {path} is a folder; give the embedding file in it", where="--embedding")
        if not path.is_file():
            raise missing_path(path, what="embedding file", where="--embedding")
    if seed is not None and seed + count - 1 > MAX_SEED:
        raise UserError(f"--seed {seed} is too large: the images' seeds go up to {MAX_SEED}", where="--seed")
    first_seed = seed if seed is not None else secrets.randbelow(2**31)
    seeds = [first_seed + index for index in range(count)]
    paths = output_paths(output, seeds, overwrite=overwrite)
    check_writable(paths[0], where="--output")
    torch_device = resolve_device(device)
    weights = resolve_dtype(dtype, torch_device)

    apply_threads()
    with keys_as_options(MODEL_WHERE):
        family = source_model_type(model, model_type, needs=(ModuleKind.LOADER, ModuleKind.SAMPLER))
        for path, _ in loras:
            check_adapter_file(path, LORA, where="--lora")
        for path in embedding or []:
            check_adapter_file(path, EMBEDDING, where="--embedding")
        objective = get_family(family).objective
        scheduler = check_scheduler(scheduler or CLI_SCHEDULERS[objective], objective)
        for option, value in (("--width", width), ("--height", height)):
            if value is not None:
                check_side(option, value, size_step(family))
        loaded = lookup(ModuleKind.LOADER, family)().load(
            _model_config(model, family, weights, config, _parse_options(family_options or [])), device=torch_device
        )
    for path, scale in loras:
        lora_file = read_lora_file(path, loaded.spec, configs=loaded.component_configs(), sampling=True)
        for message in lora_file.warnings:
            stderr.print(f"[yellow]warning:[/] {escape(message)}", soft_wrap=True)
        merge_lora(loaded, lora_file, scale)
    loaded.adapters.embeddings.extend(_embedding_file(loaded, path) for path in embedding or [])
    layer_skip = clip_skip_layers(loaded, clip_skip)
    sampler = lookup(ModuleKind.SAMPLER, family)(loaded, layer_skip=layer_skip)
    stderr.print(f"seed {first_seed}")
    with file_progress("sampling", unit="steps") as update:
        images = sampler.sample(
            prompt,
            negative_prompt,
            steps=steps,
            cfg=cfg,
            seed=first_seed,
            width=width,
            height=height,
            scheduler=scheduler,
            count=count,
            progress=update,
        )
    for image, path, image_seed in zip(images, paths, seeds, strict=True):
        info = GenerationInfo(
            prompt=prompt,
            negative_prompt=negative_prompt,
            steps=steps,
            cfg=cfg,
            seed=image_seed,
            width=image.width,
            height=image.height,
            scheduler=scheduler,
            model=model,
            loras=[(str(lora_path), scale) for lora_path, scale in loras],
            embeddings=[path.stem for path in embedding or []],
        )
        save_png(image, path, info)
        stdout.print(str(path))


def _parse_lora(spec: str) -> tuple[Path, float]:
    """`FILE` or `FILE:SCALE`; a colon followed by something that is not a number belongs to the path."""

    path, sep, scale = spec.rpartition(":")
    if sep and path:
        try:
            strength = float(scale)
        except ValueError:
            if Path(spec).expanduser().exists():
                return Path(spec).expanduser(), 1.0
            raise UserError(
                f"--lora {spec!r}: the strength {scale!r} is not a number", where="--lora", hint="Write FILE:0.8."
            ) from None
        if not math.isfinite(strength):
            raise UserError(f"--lora {spec!r}: the strength is not finite", where="--lora", hint="Write FILE:0.8.")
        return Path(path).expanduser(), strength
    return Path(spec).expanduser(), 1.0


def _embedding_file(model: DiffusionModel, path: Path) -> EmbeddingAdapter:
    """The embedding in `path`, under its file's name as A1111 names it.

    The name becomes new tokens, so one the tokenizers already know (`cat`) is refused: the embedding would
    replace that vocabulary entry, inside other words too. (A1111 looks for the name's ordinary word tokens in
    the prompt instead, which new tokens cannot imitate.) The refusal says how to rename the file.
    """
    from onetrainer.model.adapters import add_embedding, read_embedding_file

    return add_embedding(
        model,
        path.stem,
        vectors=read_embedding_file(path, model.spec),
        trainable=False,
        where=f"--embedding {path}",
        name_hint=f"An embedding file's name is its trigger word: rename the file to a word the vocabulary "
        f"lacks (e.g. {path.stem}-embedding{path.suffix}) and write that word in the prompt.",
    )


def _parse_options(pairs: list[str]) -> dict[str, object]:
    """`KEY=VALUE` pairs, each value read as YAML (`256` a number, `true` a bool)."""
    import yaml

    from onetrainer.util.errors import UserError

    options: dict[str, object] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise UserError(
                f"--option {pair!r} is not KEY=VALUE", where="--option", hint="Write e.g. --option guidance=3.5."
            )
        options[key.strip()] = yaml.safe_load(value)
    return options


def _model_config(
    source: str, family: str, weights: str, architecture: str | None, options: dict[str, object]
) -> ModelConfig:
    from pydantic import ValidationError

    from onetrainer.util.config.model import ModelConfig
    from onetrainer.util.errors import UserError
    from onetrainer.util.family import get_family

    spec = get_family(family)
    if options and spec.options is None:
        raise UserError(f"{spec.title} models have no options", where="--option")
    if spec.options is not None:
        try:
            spec.options.model_validate(options)
        except ValidationError as error:
            first = error.errors()[0]
            key = ".".join(str(part) for part in first["loc"])
            raise UserError(
                f"--option {key}: {first['msg'].removeprefix('Value error, ')}",
                where="--option",
                hint=f"{spec.title} options: {', '.join(spec.options.model_fields)}.",
            ) from None
    try:
        return ModelConfig.model_validate(
            {"type": family, "base": source, "dtype": weights, "config": architecture, "options": options}
        )
    except ValidationError as error:
        first = error.errors()[0]
        key = f"model.{first['loc'][0]}" if first["loc"] else "model.base"
        what = "model" if key == "model.base" else MODEL_WHERE.get(key, key)
        raise UserError(f"invalid {what}: {first['msg'].removeprefix('Value error, ')}", where=key) from None
