"""Import what a OneTrainer run produces: preview samples and their cadence, saves, backups, logs."""

from __future__ import annotations

from typing import Any

from onetrainer.util.config.onetrainer_json.findings import SILENT_KEYS, View
from onetrainer.util.config.onetrainer_json.import_model import batches_as_steps
from onetrainer.util.config.onetrainer_json.tables import (
    CADENCE_MINUTES,
    CADENCE_UNITS,
    LEGACY_FORMATS,
    OUTPUT_FORMATS,
    PRECISIONS,
    SAMPLERS,
)
from onetrainer.util.config.onetrainer_json.target import Target
from onetrainer.util.config.output import SIZE_STEP
from onetrainer.util.config.types import Cadence, CadenceUnit
from onetrainer.util.enums import PREVIEW_SCHEDULERS
from onetrainer.util.family import Objective

TENSORBOARD_SERVER = "onetrainer writes TensorBoard logs but starts no server; run `tensorboard --logdir` yourself"
OVERWRITTEN = (
    "text_encoder_1_layer_skip",
    "text_encoder_2_layer_skip",
    "text_encoder_3_layer_skip",
    "text_encoder_4_layer_skip",
    "transformer_attention_mask",
    "force_last_timestep",
)
"""Sample fields OneTrainer overwrites from the training config while training."""


def cadence(view: View, key: str, accumulation: int = 1) -> str:
    """A OneTrainer interval (`<key>` + `<key>_unit`) as our cadence text; OneTrainer's steps are batches, of
    which `accumulation` (the run's gradient accumulation) make one of our steps."""
    count = view[key]
    unit = view[f"{key}_unit"]
    if unit == "NEVER":
        return "never"
    if unit == "ALWAYS":
        return "1 step"
    if unit in CADENCE_UNITS:
        if count <= 0:
            return "never" if unit != "MINUTE" else "1 step"
        if unit == "STEP":
            count = batches_as_steps(view, key, count, accumulation)
        return str(Cadence(count, CadenceUnit(CADENCE_UNITS[unit])))
    minutes = count * CADENCE_MINUTES[unit]
    return str(Cadence(round(minutes, 4), CadenceUnit.MINUTE)) if minutes > 0 else "1 step"


AUTO_FORMATS = {"lora": "kohya", "embedding": "a1111"}
"""What `saving.format: auto` writes per method (full models: by the output's suffix)."""


def auto_format(method: str, output: str) -> str:
    """The format `saving.format: auto` means for `method` and the output path."""
    return AUTO_FORMATS.get(method) or ("single-file" if output.endswith(".safetensors") else "diffusers")


def map_saving(config: View, out: Target, method: str) -> None:
    out.set("saving.output", config["output_model_destination"])
    fmt = config["output_model_format"]
    formats = OUTPUT_FORMATS[method]
    out.set("saving.format", formats.get(fmt) or auto_format(method, config["output_model_destination"]))
    if fmt in LEGACY_FORMATS:
        config.note(
            "output_model_format",
            f"OneTrainer's legacy layout; onetrainer writes {formats[fmt]}, which the same tools load",
        )
    elif fmt not in formats:
        why = f"{method} outputs here: {', '.join(formats)}; {out.get('saving.format')} here"
        if config.is_default("output_model_format"):
            config.note("output_model_format", f"OneTrainer's default, for embeddings only; {why}")
        else:
            config.unsupported("output_model_format", why)
    dtype = config["output_dtype"]
    out.set("saving.dtype", PRECISIONS.get(dtype, "fp16"))
    if dtype not in PRECISIONS:
        config.unsupported("output_dtype", f"outputs are saved in {', '.join(PRECISIONS)}; FLOAT_16 here")
    out.set("saving.overwrite", not config["prevent_overwrites"])
    accumulation = config["gradient_accumulation_steps"]
    out.set("saving.every", cadence(config, "save_every", accumulation))
    out.set("saving.backup_every", cadence(config, "backup_after", accumulation))
    out.set("saving.backup_keep_last", config["rolling_backup_count"])
    if not config["rolling_backup"] and out.get("saving.backup_every") != "never":
        config.note(
            "rolling_backup", "OneTrainer keeps every backup; onetrainer keeps the newest (saving.backup_keep_last)"
        )
    config.skip("include_train_config")
    out.set("workspace", config["workspace_dir"])


def map_logging(config: View, out: Target) -> None:
    for key in ("tensorboard", "tensorboard_expose", "tensorboard_always_on", "tensorboard_port"):
        config.ignore(key, TENSORBOARD_SERVER)
    if config["validation"]:
        out.set("logging.validate_every", cadence(config, "validate_after", config["gradient_accumulation_steps"]))
    else:
        out.set("logging.validate_every", "never")
        config.ignore("validate_after", "validation is off")
        config.ignore("validate_after_unit", "validation is off")


def map_sampling(config: View, out: Target, samples: list[View], *, ema: bool, objective: Objective) -> None:
    out.set("sampling.every", cadence(config, "sample_after", config["gradient_accumulation_steps"]))
    out.set("sampling.before_training", _before_training(config, out.get("sampling.every")))
    out.set("sampling.to_tensorboard", config["samples_to_tensorboard"])
    config.skip("sample_image_format")
    config.ignore("sample_video_format", "video models are not supported")
    config.ignore("sample_audio_format", "audio is not supported")
    if ema and config["non_ema_sampling"]:
        config.note(
            "non_ema_sampling",
            "OneTrainer draws each preview with the non-EMA weights too; here with the EMA weights only "
            "(training.ema.for_samples), as OneTrainer does with non_ema_sampling false",
        )
    else:
        config.skip("non_ema_sampling")
    prompts = [prompt for prompt in (_sample(sample, objective) for sample in samples) if prompt is not None]
    out.set("sampling.prompts", prompts)


def _before_training(config: View, every: str) -> bool:
    """Whether previews come before the first step too: OneTrainer's repeating actions start at zero, unless
    `sample_skip_first` holds them back. For steps or epochs, previews come only at multiples of the interval,
    so skipping up to one interval leaves out just the first; for a clock, skipping one interval does."""
    if every == "never":
        config.ignore("sample_skip_first", "no previews are drawn")
        return False
    unit = config["sample_after_unit"]
    if unit == "ALWAYS":
        config.ignore("sample_skip_first", "sample_after_unit ALWAYS draws previews at every step, the first too")
        return True
    skip, interval = config["sample_skip_first"], config["sample_after"]
    if skip <= 0:
        return True
    first_only = skip <= interval if unit in ("EPOCH", "STEP") else skip == interval
    if first_only:
        return False
    config.unsupported(
        "sample_skip_first",
        "previews come every sampling.every from the start; only the first one, before training, can be left out "
        "(sample_skip_first up to one sample_after); none before training here",
    )
    return False


def sample_views(
    config: View, samples: list[dict[str, Any] | None], prefix: str, defaults: dict[str, Any]
) -> list[View]:
    """A view of each sample, under its index in the file; an entry the overlay refused (None) is left out."""
    return [
        View(item, defaults, config.ledger, f"{prefix}{index}.")
        for index, item in enumerate(samples)
        if item is not None
    ]


def _sample(sample: View, objective: Objective) -> dict[str, Any] | None:
    if not sample["enabled"]:
        sample.note("enabled", "a disabled sample is left out")
        sample.skip(*(key for key in sample.defaults if key not in SILENT_KEYS))
        return None
    prompt: dict[str, Any] = {"prompt": sample["prompt"]}
    if sample["negative_prompt"]:
        prompt["negative_prompt"] = sample["negative_prompt"]
    prompt["seed"] = sample["seed"] % 2**31
    sample.refuse("random_seed", "preview seeds are fixed, so previews compare across the run")
    prompt["steps"] = sample["diffusion_steps"]
    prompt["cfg"] = sample["cfg_scale"]
    prompt["width"] = _side(sample, "width")
    prompt["height"] = _side(sample, "height")
    prompt["scheduler"] = _scheduler(sample, objective)
    sample.skip(*OVERWRITTEN)
    sample.refuse("text_encoder_1_sequence_length", "each text encoder uses its tokenizer's length")
    sample.refuse("text_encoder_2_sequence_length", "each text encoder uses its tokenizer's length")
    if sample["sample_inpainting"]:
        sample.unsupported("sample_inpainting", "inpainting previews are not supported")
    else:
        sample.ignore("base_image_path", "sample_inpainting is off")
        sample.ignore("mask_image_path", "sample_inpainting is off")
    sample.ignore("frames", "video models are not supported")
    sample.ignore("length", "audio is not supported")
    return prompt


def _scheduler(sample: View, objective: Objective) -> str:
    """The preview sampler: OneTrainer's `noise_scheduler` for a DDPM model; for a flow-matching model, whose
    previews OneTrainer always draws with the model's own flow-matching Euler sampler, ours (euler)."""
    scheduler = sample["noise_scheduler"]
    if objective is Objective.FLOW_MATCHING:
        if scheduler != "EULER":
            sample.ignore(
                "noise_scheduler",
                "OneTrainer draws the previews of flow-matching models with their own Euler sampler, as here",
            )
        return PREVIEW_SCHEDULERS[objective.value]
    if scheduler not in SAMPLERS:
        sample.unsupported("noise_scheduler", f"samplers: {', '.join(SAMPLERS)}; ddim here")
    return SAMPLERS.get(scheduler, "ddim")


def _side(sample: View, key: str) -> int:
    value = int(sample[key])
    if value % SIZE_STEP or value < SIZE_STEP:
        rounded = max(SIZE_STEP, round(value / SIZE_STEP) * SIZE_STEP)
        sample.unsupported(key, f"preview sides are multiples of {SIZE_STEP}; using {rounded}")
        return rounded
    return value
