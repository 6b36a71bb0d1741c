"""`onetrainer sample MODEL --prompt TEXT`: generate images with a base model, LoRAs and embeddings."""

from __future__ import annotations

import secrets
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from onetrainer.model.stable_diffusion import StableDiffusionModel
    from onetrainer.util.enums import ModelType


class Dtype(str, Enum):
    AUTO = "auto"
    FP32 = "fp32"
    FP16 = "fp16"
    BF16 = "bf16"


def sample(
    model: Annotated[
        str, typer.Argument(help="Base model: diffusers folder, .safetensors/.ckpt file, hub id or tiny:sd15.")
    ],
    prompt: Annotated[str, typer.Option("--prompt", "-p", help="What to draw.")],
    negative_prompt: Annotated[str, typer.Option("--negative-prompt", "-n", help="What to steer away from.")] = "",
    lora: Annotated[
        list[str] | None,
        typer.Option("--lora", help="LoRA file, optionally with a strength: FILE[:SCALE]. Repeatable."),
    ] = None,
    embedding: Annotated[
        list[Path] | None,
        typer.Option("--embedding", help="Embedding file; its trigger word is the file name. Repeatable."),
    ] = None,
    steps: Annotated[int, typer.Option("--steps", min=1, max=1000, help="Denoising steps.")] = 20,
    cfg: Annotated[float, typer.Option("--cfg", min=0.0, help="Classifier-free guidance scale.")] = 7.0,
    seed: Annotated[int | None, typer.Option("--seed", min=0, help="Noise seed (default: random, printed).")] = None,
    width: Annotated[int | None, typer.Option("--width", min=8, help="Width in pixels (default: the model's).")] = None,
    height: Annotated[
        int | None, typer.Option("--height", min=8, help="Height in pixels (default: the model's).")
    ] = None,
    scheduler: Annotated[
        str, typer.Option("--scheduler", help="ddim, euler, euler-a, dpm++2m, dpm++2m-karras, unipc or ddpm.")
    ] = "dpm++2m-karras",
    count: Annotated[
        int, typer.Option("--count", min=1, max=1000, help="Images to make (seeds seed, seed+1, ...).")
    ] = 1,
    output: Annotated[Path, typer.Option("--output", "-o", help="A .png file, or a folder for numbered files.")] = Path(
        "samples"
    ),
    model_type: Annotated[
        str | None, typer.Option("--model-type", help="sd15 or sd2 (default: detect from the model).")
    ] = None,
    device: Annotated[str, typer.Option("--device", help="auto, cpu, cuda or cuda:N.")] = "auto",
    dtype: Annotated[
        Dtype, typer.Option("--dtype", help="Weights dtype; auto = fp16 on a GPU, fp32 on the CPU.")
    ] = Dtype.AUTO,
    clip_skip: Annotated[
        int, typer.Option("--clip-skip", min=1, max=12, help="1 = last text layer, 2 = penultimate.")
    ] = 1,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing output file.")] = False,
) -> None:
    """Generate images; each PNG records its prompt, seed, steps, CFG, scheduler, model and LoRAs."""
    from onetrainer.model.adapters import add_embedding, merge_lora, read_embedding_file, read_lora_file
    from onetrainer.model_loader.family import source_model_type
    from onetrainer.model_sampler.png import GenerationInfo, output_paths, save_png
    from onetrainer.model_sampler.schedulers import check_scheduler
    from onetrainer.ui.console import stderr, stdout
    from onetrainer.ui.file_progress import file_progress
    from onetrainer.util.registry import ModuleKind, lookup
    from onetrainer.util.threads import apply_threads

    scheduler = check_scheduler(scheduler)
    loras = [_parse_lora(spec) for spec in lora or []]
    for path in [path for path, _ in loras] + list(embedding or []):
        if not path.is_file():
            raise _user_error(f"no such file: {path}")
    first_seed = seed if seed is not None else secrets.randbelow(2**31)
    seeds = [first_seed + index for index in range(count)]
    paths = output_paths(output, seeds, overwrite=overwrite)
    torch_device, weights = _device_and_dtype(device, dtype)

    apply_threads()
    family = source_model_type(model, model_type)
    loaded: StableDiffusionModel = lookup(ModuleKind.LOADER, family)().load(
        _model_config(model, family, weights, clip_skip), device=torch_device
    )
    for path, scale in loras:
        merge_lora(loaded, read_lora_file(path, family.value), scale)
    added = [
        add_embedding(loaded, path.stem, vectors=read_embedding_file(path, family.value), trainable=False)
        for path in embedding or []
    ]
    if added:
        loaded.adapters.setdefault("embeddings", []).extend(added)

    sampler = lookup(ModuleKind.SAMPLER, family)(loaded, clip_skip=clip_skip)
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
        save_png(image, path, info.text_chunks())
        stdout.print(str(path))


def _user_error(message: str, hint: str | None = None) -> Exception:
    from onetrainer.util.errors import UserError

    return UserError(message, hint=hint)


def _parse_lora(spec: str) -> tuple[Path, float]:
    """`FILE` or `FILE:SCALE`; a colon followed by something that is not a number belongs to the path."""
    path, sep, scale = spec.rpartition(":")
    if sep and path:
        try:
            return Path(path).expanduser(), float(scale)
        except ValueError:
            if Path(spec).expanduser().exists():
                return Path(spec).expanduser(), 1.0
            raise _user_error(f"--lora {spec!r}: the strength {scale!r} is not a number", "Write FILE:0.8.") from None
    return Path(spec).expanduser(), 1.0


def _device_and_dtype(device: str, dtype: Dtype) -> tuple[str, str]:
    import torch

    name = device.strip().lower()
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        index = name.partition(":")[2]
        if not torch.cuda.is_available() or (
            index and (not index.isdigit() or int(index) >= torch.cuda.device_count())
        ):
            raise _user_error(f"device {device!r} is not available here", "Use --device cpu (or auto).")
    elif name not in ("cpu", "mps"):
        raise _user_error(f"unknown device {device!r}", "Use auto, cpu, cuda or cuda:N.")
    weights = dtype.value if dtype is not Dtype.AUTO else ("fp16" if name.startswith("cuda") else "fp32")
    return name, weights


def _model_config(source: str, family: ModelType, weights: str, clip_skip: int) -> object:
    from pydantic import ValidationError

    from onetrainer.util.config.model import ModelConfig

    try:
        return ModelConfig.model_validate({"type": family, "base": source, "dtype": weights, "clip_skip": clip_skip})
    except ValidationError as error:
        raise _user_error(f"invalid model: {error.errors()[0]['msg'].removeprefix('Value error, ')}") from None
