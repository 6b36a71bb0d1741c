"""Export the optimisation settings of a run config: optimizer, schedule, precision, EMA, noise and loss."""

from __future__ import annotations

from typing import Any

from onetrainer.util.config.onetrainer_json.defaults import optimizer_defaults
from onetrainer.util.config.onetrainer_json.findings import View
from onetrainer.util.config.onetrainer_json.import_training import DEVICES, PERTURBATION
from onetrainer.util.config.onetrainer_json.tables import (
    BETAS,
    DISTRIBUTION_NAMES,
    EMA_DEVICES,
    EPS_PAIR,
    LOSS_STRENGTHS,
    LOSS_WEIGHT_NAMES,
    NEAREST_OPTIMIZERS,
    OPTIMIZER_ARG_DEFAULTS,
    OPTIMIZER_ARGS,
    OPTIMIZER_NAMES,
    PRECISIONS,
    SCHEDULE_FREE_OPTIMIZERS,
    SCHEDULER_NAMES,
    SINGLE_EPS,
    reverse,
)
from onetrainer.util.family import FamilySpec, Objective

DIGITS = 12
"""Values OneTrainer stores shifted (std - 1, centre - 0.5) are rounded, so a round trip gives them back."""


def export_optimizer(training: View, ot: dict[str, Any]) -> None:
    ours = training["optimizer"]
    name = reverse(OPTIMIZER_NAMES).get(ours) or NEAREST_OPTIMIZERS[ours]
    if ours in NEAREST_OPTIMIZERS:
        training.unsupported("optimizer", f"OneTrainer's nearest is {name}, the same update from another library")
    optimizer = optimizer_defaults(name)
    optimizer["weight_decay"] = training["weight_decay"]
    betas = training["betas"]
    if betas is not None:
        for key, value in zip(("beta1", "beta2", "beta3"), betas, strict=False):
            optimizer[key] = value
        if len(betas) != BETAS.get(ours, 0):
            training.unsupported("betas", f"the {ours} optimizer takes {BETAS.get(ours, 0)} betas")
    eps = training["eps"]
    if eps is not None and ours in SINGLE_EPS:
        optimizer["eps"] = eps
    if ours == "sgd":
        optimizer["momentum"] = training["momentum"]
    else:
        training.ignore("momentum", "only used by sgd")
    args = {**OPTIMIZER_ARG_DEFAULTS[ours], **training["optimizer_args"]}  # ours where the config says nothing
    if ours in EPS_PAIR and isinstance(args.get("eps"), list) and len(args["eps"]) == 2:
        optimizer["eps"], optimizer["eps2"] = args.pop("eps")
    by_argument = reverse(OPTIMIZER_ARGS[ours])
    for argument, value in args.items():
        if argument in by_argument:
            optimizer[by_argument[argument]] = value
        else:
            training.ledger.refuse(
                f"training.optimizer_args.{argument}", value, f"OneTrainer's {name} has no such setting"
            )
    ot["optimizer"] = optimizer
    ot["optimizer_defaults"] = {name: dict(optimizer)}


SCHEDULE_FREE = {OPTIMIZER_NAMES[name] for name in SCHEDULE_FREE_OPTIMIZERS if name in OPTIMIZER_NAMES}
"""Our names of the optimizers OneTrainer gives its warm-up unscaled (they take it in their own steps)."""


def _warmup(training: View) -> float:
    """OneTrainer counts a warm-up in batches, and reads 1 or less as a share of the run; except for a
    schedule-free optimizer, which it hands the value unchanged, as a count of that optimizer's steps (ours
    too), so that a share of the run has no equivalent there."""
    warmup = float(training["warmup"])
    if training["optimizer"] in SCHEDULE_FREE:
        if 0 < warmup < 1:
            training.unsupported(
                "warmup",
                "OneTrainer gives a schedule-free optimizer its warm-up in steps, where a fraction does not "
                "warm up; give training.warmup in steps",
            )
        return warmup
    if warmup == 1:
        training.unsupported("warmup", "OneTrainer reads a warm-up of 1 as the whole run; 2 steps there")
        warmup = 2.0
    return warmup * training["gradient_accumulation_steps"] if warmup > 1 else warmup


def export_schedule(training: View, ot: dict[str, Any]) -> None:
    ot["learning_rate"] = training["learning_rate"]
    scheduler = training["lr_scheduler"]
    if scheduler in reverse(SCHEDULER_NAMES):
        ot["learning_rate_scheduler"] = reverse(SCHEDULER_NAMES)[scheduler]
    else:
        training.unsupported("lr_scheduler", f"OneTrainer's schedules here: {', '.join(reverse(SCHEDULER_NAMES))}")
    ot["learning_rate_warmup_steps"] = _warmup(training)
    ot["learning_rate_cycles"] = float(training["lr_cycles"])
    ot["learning_rate_min_factor"] = training["lr_min_factor"]
    ot["epochs"] = training["epochs"]
    ot["batch_size"] = training["batch_size"]
    ot["gradient_accumulation_steps"] = training["gradient_accumulation_steps"]
    ot["clip_grad_norm"] = training["max_grad_norm"]
    ot["train_dtype"] = reverse(PRECISIONS)[training["precision"]]
    device = training["device"]
    ot["train_device"] = reverse(DEVICES).get(device, device)
    training.skip("gradient_checkpointing")
    ot["compile"] = training["compile"]
    training.ignore("channels_last", "OneTrainer keeps the weights' memory layout; only the speed differs")
    training.ignore("read_back_lag", "OneTrainer reads the loss back every step; only the speed differs")
    ema = training.child("ema")
    if ema["enabled"]:
        ot["ema"] = reverse(EMA_DEVICES)[ema["device"]]
        ot["ema_decay"] = ema["decay"]
        ot["ema_update_step_interval"] = ema["update_every"]
        ot["non_ema_sampling"] = False  # previews with the EMA weights only, as ours
        ema.refuse("for_samples", "OneTrainer draws previews with the EMA weights whenever EMA is on")
        ema.refuse("for_saves", "OneTrainer saves the EMA weights")
        ema.refuse("warmup", "OneTrainer's moving average always warms up")
    else:
        ot["ema"] = "OFF"
        for key in ("decay", "update_every", "warmup", "device", "for_samples", "for_saves"):
            ema.ignore(key, "ema is off")


def export_noise(ours: View, ot: dict[str, Any], spec: FamilySpec) -> None:
    noise = ours.child("noise")
    ot["offset_noise_weight"] = noise["offset"]
    noise.refuse("input_perturbation", PERTURBATION)
    noise.skip("zero_terminal_snr")
    timesteps = noise.child("timesteps")
    ot["min_noising_strength"] = timesteps["min_strength"]
    ot["max_noising_strength"] = timesteps["max_strength"]
    distribution = timesteps["distribution"]
    if distribution in reverse(DISTRIBUTION_NAMES):
        ot["timestep_distribution"] = reverse(DISTRIBUTION_NAMES)[distribution]
    else:
        timesteps.unsupported(
            "distribution", f"OneTrainer's distributions here: {', '.join(reverse(DISTRIBUTION_NAMES))}"
        )
    if distribution == "logit-normal":
        ot["noising_bias"] = timesteps["mean"]
        ot["noising_weight"] = round(timesteps["std"] - 1, DIGITS)
    elif distribution == "sigmoid":
        ot["noising_weight"] = timesteps["steepness"]
        ot["noising_bias"] = round(timesteps["center"] - 0.5, DIGITS)
    for key in ("mean", "std", "steepness", "center", "mode_scale"):
        timesteps.ignore(key, f"not used by the {distribution} distribution")
    if spec.objective is Objective.FLOW_MATCHING:
        scheduler = _shipped_scheduler(spec)
        shift, dynamic = noise["shift"], noise["dynamic_shift"]
        ot["timestep_shift"] = shift if shift is not None else float(scheduler.get("shift", 1.0))
        own = bool(scheduler.get("use_dynamic_shifting", False))
        ot["dynamic_timestep_shifting"] = dynamic if dynamic is not None else own


def _shipped_scheduler(spec: FamilySpec) -> dict[str, Any]:
    """The family's scheduler config as released, whose shift `noise.shift: null` trains with (OneTrainer's
    default would be no shift at all)."""
    import json

    from onetrainer.model.configs import config_dir

    name = spec.shipped_config_for(None)
    if name is None:
        return {}
    return json.loads((config_dir(name) / "scheduler" / "scheduler_config.json").read_text(encoding="utf-8"))


def export_loss(ours: View, ot: dict[str, Any]) -> None:
    loss = ours.child("loss")
    for key in LOSS_STRENGTHS:
        ot[key] = 0.0
    ot[reverse(LOSS_STRENGTHS)[loss["type"]]] = 1.0
    ot["huber_delta"] = loss["huber_delta"]
    weighting = loss["weighting"]
    if weighting in reverse(LOSS_WEIGHT_NAMES):
        ot["loss_weight_fn"] = reverse(LOSS_WEIGHT_NAMES)[weighting]
    else:
        loss.unsupported("weighting", f"OneTrainer's weightings here: {', '.join(reverse(LOSS_WEIGHT_NAMES))}")
    if weighting == "min-snr-gamma":
        ot["loss_weight_strength"] = loss["gamma"]
    else:
        loss.ignore("gamma", "only used by min-snr-gamma")
