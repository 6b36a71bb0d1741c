"""Import the model side of a OneTrainer config: model type and base, method, and the model's parts.

OneTrainer's part objects are named as diffusers names the components (`unet`, `text_encoder_2`,
`transformer`, `vae`), which are our `parts` keys too; a part object the family does not have is
one OneTrainer writes for every model type and ignores, so it is skipped.
"""

from __future__ import annotations

from onetrainer.util.config.onetrainer_json.defaults import part_names
from onetrainer.util.config.onetrainer_json.findings import View
from onetrainer.util.config.onetrainer_json.tables import METHODS
from onetrainer.util.config.onetrainer_json.target import Target
from onetrainer.util.config.types import Cadence, CadenceUnit
from onetrainer.util.errors import UserError
from onetrainer.util.family import FamilySpec, Role, families, get_family

LAYER_SKIP_KEYS = {
    "text_encoder_layer_skip": "text_encoder",
    "text_encoder_2_layer_skip": "text_encoder_2",
    "text_encoder_3_layer_skip": "text_encoder_3",
    "text_encoder_4_layer_skip": "text_encoder_4",
}


def supported_model_types() -> dict[str, list[FamilySpec]]:
    """OneTrainer model type -> the registered families that train it (by name)."""
    found: dict[str, list[FamilySpec]] = {}
    for spec in families():
        for name in spec.onetrainer_model_types:
            found.setdefault(name, []).append(spec)
    return found


def family_of(model_type: str, base: str = "") -> tuple[FamilySpec, str | None]:
    """The family of a OneTrainer model type, and why it was chosen where several train that type.

    A type several families share is told apart by its base model: a tiny model, a hub id a family
    names, or a local file or folder (its header or configs, no weights). Where the base says nothing,
    the first by name, and the second value says so (a note for the user).
    """
    candidates = supported_model_types().get(model_type)
    if not candidates:
        supported = ", ".join(supported_model_types())
        raise UserError(
            f"OneTrainer model type {model_type!r} is not supported in this version of onetrainer",
            where="model_type",
            hint=f"Supported model types: {supported}.",
        )
    if len(candidates) == 1:
        return candidates[0], None
    named = _family_of_base(base, [spec.name for spec in candidates])
    if named is not None:
        return next(spec for spec in candidates if spec.name == named), None
    titles = " and ".join(spec.title for spec in candidates)
    others = ", ".join(spec.name for spec in candidates[1:])
    why = (
        f"OneTrainer's type for {titles}; the base model does not say which (no tiny model, known hub id or "
        f"readable local file), so {candidates[0].name}: set model.type={others} if it is that"
    )
    return candidates[0], why


def _family_of_base(base: str, names: list[str]) -> str | None:
    """The family `base` is a model of, if it is one of `names` and can be told without the network."""
    from pathlib import Path

    from onetrainer.util.config.types import TINY_PREFIX
    from onetrainer.util.family import tiny_model

    text = base.strip()
    if text.startswith(TINY_PREFIX):
        try:
            found = tiny_model(text.removeprefix(TINY_PREFIX))[0].name
        except UserError:
            return None
        return found if found in names else None
    for name in names:
        if any(text.lower() == hub_id.lower() for hub_id in get_family(name).hub_ids):
            return name
    if not text or not Path(text).expanduser().exists():
        return None
    from onetrainer.util.detect import detect_path

    try:
        detection = detect_path(text)
    except (UserError, OSError, ValueError):
        return None
    return detection.family if detection.family in names else None


def map_model(config: View, out: Target) -> tuple[FamilySpec, str]:
    """`model.*` and `method`; returns the family and our method name."""
    spec, why = family_of(config["model_type"], config["base_model_name"])
    if why is not None:
        config.note("model_type", why)
    training_method = config["training_method"]
    method = METHODS.get(training_method)
    if method is None or method not in spec.methods:
        raise UserError(
            f"training_method {training_method} is not supported for {spec.title} models",
            where="training_method",
            hint=f"Supported: {', '.join(k for k, v in METHODS.items() if v in spec.methods)}.",
        )
    out.set("model.type", spec.name)
    out.set("model.base", config["base_model_name"])
    out.set("method", method)
    _prediction_type(config, out)
    return spec, method


def _prediction_type(config: View, out: Target) -> None:
    v_prediction = config["force_v_prediction"]
    epsilon = config["force_epsilon_prediction"]
    zero_snr = config["rescale_noise_scheduler_to_zero_terminal_snr"]
    out.set("noise.zero_terminal_snr", zero_snr)
    if v_prediction and epsilon:
        config.unsupported("force_epsilon_prediction", "force_v_prediction is set too; onetrainer uses v-prediction")
    if v_prediction or zero_snr:
        out.set("model.prediction_type", "v_prediction")
    elif epsilon:
        out.set("model.prediction_type", "epsilon")


def batches_as_steps(view: View, key: str, batches: int, accumulation: int) -> int:
    """OneTrainer's STEP unit counts batches (its step counter moves once per batch, also while gradients
    accumulate); ours counts optimizer steps of `accumulation` batches each. A count that is no whole number of
    steps is rounded (to one at least), with a note."""
    accumulation = max(1, accumulation)
    steps = max(1, round(batches / accumulation))
    if batches % accumulation:
        view.note(
            key,
            f"OneTrainer counts batches: {batches} batches, {accumulation} accumulated per optimizer step, are "
            f"{batches / accumulation:g} steps; {steps} here",
        )
    return steps


def map_parts(config: View, out: Target, spec: FamilySpec, method: str) -> None:
    """Each part the family has: train, learning rate, stop point, layer skip, dropout; the rest refused.

    OneTrainer zeroes each text encoder's output on its own (`dropout_probability` of a text encoder part), as
    our `parts.<encoder>.dropout` does.
    """
    for name in part_names():
        if name not in spec.component_names:
            config.skip(name)
            continue
        role = spec.component(name).role
        part = config.child(name)
        left_out = f"{name}.include" in spec.onetrainer_options and not part["include"]
        if role is Role.VAE:
            _vae_part(part, out)
        elif left_out:
            _left_out_part(part, out, name)
        else:
            _trainable_part(part, out, name, role, method, config["gradient_accumulation_steps"])
        _common_part(part, spec, name)
        if role is Role.TEXT_ENCODER and not left_out and part["dropout_probability"]:
            out.set(f"parts.{name}.dropout", part["dropout_probability"])
    for key, name in LAYER_SKIP_KEYS.items():
        if name not in spec.component_names or spec.component(name).role is not Role.TEXT_ENCODER:
            config.ignore(key, "the model has no such text encoder")
        elif spec.component(name).takes_layer_skip:
            out.set(f"parts.{name}.layer_skip", config[key])
        elif config[key]:
            title = spec.component(name).title
            config.unsupported(key, f"{spec.title} models read only the {title}'s last layer or pooled output")


def _vae_part(part: View, out: Target) -> None:
    part.skip("train", "stop_training_after", "stop_training_after_unit", "learning_rate", "dropout_probability")
    part.skip("train_embedding", "gradient_checkpointing")
    if part["model_name"]:
        out.set("model.vae", part["model_name"])


def _left_out_part(part: View, out: Target, name: str) -> None:
    """An optional part left out (`include: false`, a `model.options` switch) trains in no way."""
    out.set(f"parts.{name}.train", False)
    for key in ("train", "stop_training_after", "stop_training_after_unit", "learning_rate", "dropout_probability"):
        part.ignore(key, "the part is left out (include is false)")
    part.skip("model_name", "train_embedding", "gradient_checkpointing")


def _trainable_part(part: View, out: Target, name: str, role: Role, method: str, accumulation: int) -> None:
    if part["model_name"]:
        part.unsupported("model_name", "only the VAE can be loaded from elsewhere (model.vae)")
    if method == "embedding":
        part.skip("train", "stop_training_after", "stop_training_after_unit", "learning_rate")
    else:
        train = part["train"]
        stop = stop_after(part, "stop_training_after", accumulation)
        out.set(f"parts.{name}.train", bool(train) and stop != "0 steps")
        if train and stop not in ("never", "0 steps"):
            out.set(f"parts.{name}.stop_after", stop)
        if part["learning_rate"] is not None:
            out.set(f"parts.{name}.learning_rate", part["learning_rate"])
    if role is Role.DENOISER:
        out.set("training.gradient_checkpointing", part["gradient_checkpointing"])
        part.skip("dropout_probability", "train_embedding")
    else:
        part.skip("gradient_checkpointing")
        part.refuse("train_embedding", "embeddings train in every text encoder that takes them")


def _common_part(part: View, spec: FamilySpec, name: str) -> None:
    """What every part object holds besides training and memory settings (`import_memory` maps those)."""
    if f"{name}.include" not in spec.onetrainer_options:
        part.refuse("include", f"{spec.title} models need their {spec.component(name).title} here")
    part.refuse("attention_mask", "there is no text attention-mask switch")
    if f"{name}.guidance_scale" not in spec.onetrainer_options:
        part.ignore("guidance_scale", f"the {spec.title} {spec.component(name).title} takes no guidance input")


def map_options(config: View, out: Target, spec: FamilySpec) -> None:
    """The OneTrainer settings that are the family's `model.options`, where they differ from our default."""
    from pydantic import ValidationError

    if spec.options is None:
        return
    for option, value in spec.onetrainer_fixed_options.items():
        out.set(f"model.options.{option}", value)
    defaults = spec.options.model_validate({}).model_dump()
    for key, option in spec.onetrainer_options.items():
        part, _, setting = key.rpartition(".")
        view = config.child(part) if part else config
        value = view[setting]
        if value is None or value == defaults[option]:
            continue
        try:
            spec.options.model_validate({option: value})
        except ValidationError as error:
            view.unsupported(setting, f"model.options.{option}: {error.errors()[0]['msg']}")
            continue
        out.set(f"model.options.{option}", value)


def stop_after(view: View, key: str, accumulation: int = 1) -> str:
    """A OneTrainer stop point (N + unit) as our `stop_after` cadence; "0 steps" means "never trains".

    `accumulation` is the run's gradient accumulation: OneTrainer's steps are batches (`batches_as_steps`).
    """
    count = view[key]
    unit = view[f"{key}_unit"]
    if unit == "NEVER" or count is None:
        return "never"
    if unit == "ALWAYS" or count <= 0:
        return "0 steps"
    if unit == "STEP":
        count = batches_as_steps(view, key, count, accumulation)
    if unit in ("EPOCH", "STEP"):
        return str(Cadence(count, CadenceUnit(unit.lower())))
    view.unsupported(f"{key}_unit", "stop points count steps or epochs, so runs stay reproducible")
    return "never"
