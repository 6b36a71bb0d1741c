"""Export what a run produces: previews (as OneTrainer's inline sample list), saves, backups and logs."""

from __future__ import annotations

from typing import Any

from onetrainer.util.config.onetrainer_json.defaults import sample_defaults
from onetrainer.util.config.onetrainer_json.findings import View
from onetrainer.util.config.onetrainer_json.import_output import auto_format
from onetrainer.util.config.onetrainer_json.tables import OUTPUT_FORMATS, PRECISIONS, SAMPLERS, reverse
from onetrainer.util.enums import PREVIEW_SCHEDULERS
from onetrainer.util.family import FamilySpec, Objective

UNITS = {"step": "STEP", "epoch": "EPOCH", "minute": "MINUTE"}


def interval(view: View, key: str, accumulation: int = 1) -> tuple[int, str]:
    """Our cadence text as OneTrainer's whole-number interval and unit: OneTrainer's steps are batches, of which
    `accumulation` (the run's gradient accumulation) make one of ours."""
    text = view[key]
    if text == "never":
        return 0, "NEVER"
    count, unit = text.split()
    value = float(count)
    unit = UNITS[unit.rstrip("s")]
    if unit == "STEP":
        value *= accumulation
    if value.is_integer():
        return int(value), unit
    if unit == "MINUTE" and (value * 60).is_integer():
        return int(value * 60), "SECOND"
    view.unsupported(key, "OneTrainer counts whole steps, epochs, minutes or seconds")
    return max(1, round(value)), unit


def export_sampling(ours: View, ot: dict[str, Any], resolution: int | list[int], objective: Objective) -> None:
    sampling = ours.child("sampling")
    accumulation = ours.child("training")["gradient_accumulation_steps"]
    ot["sample_after"], ot["sample_after_unit"] = interval(sampling, "every", accumulation)
    if ot["sample_after_unit"] == "NEVER":
        sampling.refuse("before_training", "OneTrainer draws previews before the first step only with sample_after")
    elif not sampling["before_training"]:
        ot["sample_skip_first"] = ot["sample_after"]  # else OneTrainer draws them at step 0 too
    ot["samples_to_tensorboard"] = sampling["to_tensorboard"]
    ot["sample_image_format"] = "PNG"
    side = resolution[0] if isinstance(resolution, list) else resolution
    ot["samples"] = [_sample(prompt, side, objective) for prompt in sampling.items("prompts", {})]


def _sample(prompt: View, side: int, objective: Objective) -> dict[str, Any]:
    sample = sample_defaults()
    sample["prompt"] = prompt["prompt"]
    sample["negative_prompt"] = prompt["negative_prompt"]
    sample["seed"] = prompt["seed"]
    sample["diffusion_steps"] = prompt["steps"]
    sample["cfg_scale"] = prompt["cfg"]
    sample["width"] = prompt["width"] or side
    sample["height"] = prompt["height"] or side
    scheduler = prompt["scheduler"]
    if objective is Objective.FLOW_MATCHING and scheduler != PREVIEW_SCHEDULERS[objective.value]:
        prompt.unsupported("scheduler", "OneTrainer draws the previews of flow-matching models with Euler only")
    elif scheduler in reverse(SAMPLERS):
        sample["noise_scheduler"] = reverse(SAMPLERS)[scheduler]
    else:
        prompt.unsupported("scheduler", f"OneTrainer's samplers here: {', '.join(reverse(SAMPLERS))}")
    return sample


def saved_format(ours: View, spec: FamilySpec) -> str:
    """The format the run saves in, `auto` resolved as the saver resolves it (a LoRA: the family's layout for
    the parts that train, which decides a DoRA's axis)."""
    saving = ours.child("saving")
    fmt = saving["format"]
    if fmt != "auto":
        return str(fmt)
    if ours["method"] == "lora":
        parts = ours.data.get("parts") or {}
        return spec.auto_lora_format_for(name for name, part in parts.items() if part.get("train"))
    return auto_format(ours["method"], saving["output"])


def export_saving(ours: View, ot: dict[str, Any], spec: FamilySpec) -> None:
    saving = ours.child("saving")
    method = ours["method"]
    ot["output_model_destination"] = saving["output"]
    fmt = saved_format(ours, spec)
    formats = reverse(OUTPUT_FORMATS[method])
    if fmt in formats:
        ot["output_model_format"] = formats[fmt]
    else:
        saving.unsupported("format", f"OneTrainer's {method} formats here: {', '.join(formats)}")
    ot["output_dtype"] = reverse(PRECISIONS)[saving["dtype"]]
    ot["prevent_overwrites"] = not saving["overwrite"]
    accumulation = ours.child("training")["gradient_accumulation_steps"]
    ot["save_every"], ot["save_every_unit"] = interval(saving, "every", accumulation)
    ot["backup_after"], ot["backup_after_unit"] = interval(saving, "backup_every", accumulation)
    ot["rolling_backup"] = True
    ot["rolling_backup_count"] = saving["backup_keep_last"]
    ot["workspace_dir"] = ours["workspace"]


def export_logging(ours: View, ot: dict[str, Any]) -> None:
    logging = ours.child("logging")
    logging.refuse("tensorboard", "OneTrainer always writes TensorBoard logs")
    count, unit = interval(logging, "validate_every", ours.child("training")["gradient_accumulation_steps"])
    ot["validation"] = unit != "NEVER"
    if ot["validation"]:
        ot["validate_after"], ot["validate_after_unit"] = count, unit
