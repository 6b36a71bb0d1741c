"""Import the model side of a OneTrainer config: model type and base, method, and the model's parts.

OneTrainer's part objects are named as diffusers names the components (`unet`, `text_encoder_2`,
`transformer`, `vae`), which are our `parts` keys too; a part object the family does not have is
one OneTrainer writes for every model type and ignores, so it is skipped.
"""

from __future__ import annotations

from onetrainer.util.config.onetrainer_json.defaults import part_names
from onetrainer.util.config.onetrainer_json.findings import View
from onetrainer.util.config.onetrainer_json.tables import METHODS, PRECISIONS
from onetrainer.util.config.onetrainer_json.target import Target
from onetrainer.util.config.types import Cadence, CadenceUnit
from onetrainer.util.errors import UserError
from onetrainer.util.family import FamilySpec, Role, families

LAYER_SKIP_KEYS = {
    "text_encoder_layer_skip": "text_encoder",
    "text_encoder_2_layer_skip": "text_encoder_2",
    "text_encoder_3_layer_skip": "text_encoder_3",
    "text_encoder_4_layer_skip": "text_encoder_4",
}


def supported_model_types() -> dict[str, FamilySpec]:
    """OneTrainer model type -> the registered family that trains it."""
    return {name: spec for spec in families() for name in spec.onetrainer_model_types}


def family_of(model_type: str) -> FamilySpec:
    """The family of a OneTrainer model type, or a user error naming the ones this version supports."""
    spec = supported_model_types().get(model_type)
    if spec is None:
        supported = ", ".join(supported_model_types())
        raise UserError(
            f"OneTrainer model type {model_type!r} is not supported in this version of onetrainer",
            where="model_type",
            hint=f"Supported model types: {supported}.",
        )
    return spec


def map_model(config: View, out: Target) -> tuple[FamilySpec, str]:
    """`model.*` and `method`; returns the family and our method name."""
    spec = family_of(config["model_type"])
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


def map_parts(config: View, out: Target, spec: FamilySpec, method: str) -> float:
    """Each part the family has: train, learning rate, stop point, weight dtype, layer skip; the rest refused.

    Returns the caption dropout: OneTrainer sets it per text encoder (`dropout_probability` of a text
    encoder part), we per concept, so the text encoders must agree.
    """
    dropouts: dict[str, float] = {}
    for name in part_names():
        if name not in spec.component_names:
            config.skip(name)
            continue
        role = spec.component(name).role
        part = config.child(name)
        if role is Role.VAE:
            _vae_part(part, out)
        else:
            _trainable_part(part, out, name, role, method)
        _common_part(part, out, name, trains=role is not Role.VAE and method == "full" and part["train"])
        if role is Role.TEXT_ENCODER:
            dropouts[name] = part["dropout_probability"]
    for key, name in LAYER_SKIP_KEYS.items():
        if name in spec.component_names and spec.component(name).role is Role.TEXT_ENCODER:
            out.set(f"parts.{name}.layer_skip", config[key])
        else:
            config.ignore(key, "the model has no such text encoder")
    return _caption_dropout(config, dropouts)


def _caption_dropout(config: View, dropouts: dict[str, float]) -> float:
    values = sorted(set(dropouts.values()))
    if len(values) > 1:
        for name in dropouts:
            config.child(name).unsupported(
                "dropout_probability", "caption dropout is one probability for all text encoders"
            )
    return values[0] if values else 0.0


def _vae_part(part: View, out: Target) -> None:
    part.skip("train", "stop_training_after", "stop_training_after_unit", "learning_rate", "dropout_probability")
    part.skip("train_embedding", "gradient_checkpointing")
    if part["model_name"]:
        out.set("model.vae", part["model_name"])


def _trainable_part(part: View, out: Target, name: str, role: Role, method: str) -> None:
    if part["model_name"]:
        part.unsupported("model_name", "only the VAE can be loaded from elsewhere (model.vae)")
    if method == "embedding":
        part.skip("train", "stop_training_after", "stop_training_after_unit", "learning_rate")
    else:
        train = part["train"]
        stop = stop_after(part, "stop_training_after")
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


def _common_part(part: View, out: Target, name: str, *, trains: bool) -> None:
    dtype = part["weight_dtype"]
    ours = "fp32" if trains else PRECISIONS.get(dtype, "fp32")
    if trains and dtype not in ("FLOAT_32", "NONE"):
        part.unsupported("weight_dtype", "fully trained parts keep fp32 weights")
    elif dtype not in PRECISIONS and dtype != "NONE":
        part.unsupported(
            "weight_dtype", f"weights are stored in {', '.join(PRECISIONS.values())} (no quantisation); {ours} here"
        )
    out.set(f"parts.{name}.weight_dtype", ours)
    part.refuse("include", "onetrainer loads every part of the model")
    part.refuse("attention_mask", "there is no text attention-mask switch")
    part.refuse("guidance_scale", "there is no guidance input to train with")
    part.refuse("offload_fraction", "layer offloading is not supported")
    part.refuse("activation_offloading", "activation offloading is not supported")


def stop_after(view: View, key: str) -> str:
    """A OneTrainer stop point (N + unit) as our `stop_after` cadence; "0 steps" means "never trains"."""
    count = view[key]
    unit = view[f"{key}_unit"]
    if unit == "NEVER" or count is None:
        return "never"
    if unit == "ALWAYS" or count <= 0:
        return "0 steps"
    if unit in ("EPOCH", "STEP"):
        return str(Cadence(count, CadenceUnit(unit.lower())))
    view.unsupported(f"{key}_unit", "stop points count steps or epochs, so runs stay reproducible")
    return "never"
