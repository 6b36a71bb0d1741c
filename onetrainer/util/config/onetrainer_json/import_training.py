"""Import OneTrainer's optimisation settings: optimizer, schedule, batch, precision, EMA, noise and loss.

OneTrainer's entry points disagree on the optimizer: the trainer reads the `optimizer` object (a
null field meaning the optimizer's built-in default), the UI rebuilds it from `optimizer_defaults`
(its memory of each optimizer's last settings). `resolve_optimizer` follows the reference's rule:
the file's `optimizer` value if not null, else `optimizer_defaults[name]`'s, else the built-in.
"""

from __future__ import annotations

import re
from typing import Any

from onetrainer.util.config.family import DISTRIBUTIONS, WEIGHTINGS
from onetrainer.util.config.onetrainer_json.defaults import _coerce_object, given_object, optimizer_defaults
from onetrainer.util.config.onetrainer_json.findings import Ledger, View, same
from onetrainer.util.config.onetrainer_json.tables import (
    BETAS,
    DISTRIBUTION_NAMES,
    EMA_DEVICES,
    EPS_PAIR,
    IMPLEMENTATION_FIELDS,
    LOSS_STRENGTHS,
    LOSS_WEIGHT_NAMES,
    OPTIMIZER_ARG_DEFAULTS,
    OPTIMIZER_ARGS,
    OPTIMIZER_NAMES,
    PRECISIONS,
    SCHEDULE_FREE_OPTIMIZERS,
    SCHEDULER_NAMES,
    SINGLE_EPS,
    UNSUPPORTED_OPTIMIZER_FIELDS,
)
from onetrainer.util.config.onetrainer_json.target import Target
from onetrainer.util.family import FamilySpec, Objective

DEVICES = {"cuda": "auto"}
"""OneTrainer's `cuda` (its default) is our `auto`: CUDA where there is one."""


def resolve_optimizer(raw: dict[str, Any], ledger: Ledger) -> View:
    """The optimizer object as the run would use it, over the chosen optimizer's built-in defaults."""
    given = given_object(raw.get("optimizer"), "optimizer", ledger)
    name = given.get("optimizer") or "ADAMW"
    known = name if isinstance(name, str) else "ADAMW"  # any other name is refused as `optimizer.optimizer`
    defaults = optimizer_defaults(known)
    remembered = _object(given_object(raw.get("optimizer_defaults"), "optimizer_defaults", ledger).get(known))
    chosen = {key: value for key, value in remembered.items() if value is not None}
    chosen.update({key: value for key, value in given.items() if value is not None})
    values = _coerce_object(chosen, defaults, "optimizer", "optimizer.", ledger)
    return View(values, defaults, ledger, "optimizer.")


def _object(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def map_optimizer(config: View, optimizer: View, out: Target) -> None:
    config.skip("optimizer_defaults")
    name = optimizer["optimizer"]
    ours = OPTIMIZER_NAMES.get(name)
    if ours is None:
        optimizer.unsupported("optimizer", f"optimizers: {', '.join(OPTIMIZER_NAMES)}")
        ours = "adamw"
    out.set("training.optimizer", ours)
    if optimizer["weight_decay"] is not None:
        out.set("training.weight_decay", optimizer["weight_decay"])
    count = BETAS.get(ours)
    betas = [optimizer[key] for key in ("beta1", "beta2", "beta3")[: count or 0]]
    if count and all(beta is not None for beta in betas):
        out.set("training.betas", betas)
    if ours in SINGLE_EPS and optimizer["eps"] is not None:
        out.set("training.eps", optimizer["eps"])
    if ours == "sgd" and optimizer["momentum"] is not None:
        out.set("training.momentum", optimizer["momentum"])
    args: dict[str, Any] = {}
    ours_by_default = OPTIMIZER_ARG_DEFAULTS[ours]
    if ours in EPS_PAIR:
        pair = [optimizer["eps"], optimizer["eps2"]]
        if None not in pair and pair != ours_by_default["eps"]:
            args["eps"] = pair
    for key, argument in OPTIMIZER_ARGS[ours].items():
        value = optimizer[key]
        if value is not None and not same(value, ours_by_default[argument]):
            args[argument] = value
    for key, why in UNSUPPORTED_OPTIMIZER_FIELDS.get(ours, {}).items():
        optimizer.refuse(key, why)
    if args:
        out.set("training.optimizer_args", args)
    for key in IMPLEMENTATION_FIELDS:
        optimizer.ignore(key, "picks an implementation; onetrainer chooses the kernels itself")


def map_schedule(config: View, out: Target, optimizer: str) -> None:
    """The learning-rate schedule, warm-up and length of the run, for the OneTrainer `optimizer` (its name)."""
    out.set("training.learning_rate", config["learning_rate"])
    scheduler = config["learning_rate_scheduler"]
    if optimizer in SCHEDULE_FREE_OPTIMIZERS:
        if scheduler != "CONSTANT":
            config.note(
                "learning_rate_scheduler",
                f"OneTrainer runs the schedule-free {optimizer} optimizer with a CONSTANT schedule, as here",
            )
        scheduler = "CONSTANT"
    out.set("training.lr_scheduler", SCHEDULER_NAMES.get(scheduler, "constant"))
    if scheduler in SCHEDULER_NAMES:
        config.ignore("custom_learning_rate_scheduler", "learning_rate_scheduler is not CUSTOM")
        config.ignore("scheduler_params", "learning_rate_scheduler is not CUSTOM")
    else:
        config.unsupported("learning_rate_scheduler", f"schedules: {', '.join(SCHEDULER_NAMES)}; CONSTANT here")
        config.refuse("custom_learning_rate_scheduler", "custom schedulers are not supported")
        config.refuse("scheduler_params", "custom schedulers are not supported")
    warmup = config["learning_rate_warmup_steps"]
    accumulation = max(1, config["gradient_accumulation_steps"])
    if optimizer in SCHEDULE_FREE_OPTIMIZERS:
        _schedule_free_warmup(config, optimizer)
    elif warmup == 1.0:
        config.unsupported("learning_rate_warmup_steps", "a warm-up over the whole run (1.0) is not supported; 0.999")
        warmup = 0.999
    elif warmup > 1:
        warmup = float(int(warmup / accumulation))  # steps are batches in OneTrainer, which divides them so
    out.set("training.warmup", warmup)
    cycles = config["learning_rate_cycles"]
    if scheduler == "COSINE_WITH_HARD_RESTARTS":
        out.set("training.lr_cycles", max(1, round(cycles)))
        if not float(cycles).is_integer() or cycles < 1:
            config.unsupported(
                "learning_rate_cycles", f"restart cycles are a whole number; {max(1, round(cycles))} here"
            )
    else:
        config.ignore("learning_rate_cycles", "only used by cosine with restarts")
    if SCHEDULER_NAMES.get(scheduler, "constant") == "constant":
        config.ignore("learning_rate_min_factor", "the constant schedule does not decay")
    else:
        out.set("training.lr_min_factor", config["learning_rate_min_factor"])
    out.set("training.epochs", config["epochs"])
    out.set("training.batch_size", config["batch_size"])
    out.set("training.gradient_accumulation_steps", config["gradient_accumulation_steps"])
    out.set("training.max_grad_norm", config["clip_grad_norm"] or None)


def _schedule_free_warmup(config: View, optimizer: str) -> None:
    """OneTrainer hands its warm-up to a schedule-free optimizer unchanged, as that optimizer's count of steps,
    where we count optimizer steps too: a count imports as it is (1.0 too: one step, no warm-up, in both).
    A fraction it takes as a fraction of one step, so it does not warm up (the first step at more than the
    learning rate); we keep our meaning, a share of the run, and say so."""
    warmup = config["learning_rate_warmup_steps"]
    if 0 < warmup < 1:
        config.note(
            "learning_rate_warmup_steps",
            f"OneTrainer hands {warmup:g} to the schedule-free {optimizer} optimizer as a number of steps, so it does "
            f"not warm up (its first step is at {1 / warmup:g} times the learning rate); imported as a warm-up over "
            f"{warmup:g} of the run (training.warmup: {warmup:g})",
        )


def map_precision(config: View, out: Target) -> None:
    dtype = config["train_dtype"]
    if dtype in PRECISIONS:
        out.set("training.precision", PRECISIONS[dtype])
    else:
        out.set("training.precision", "fp32")
        config.unsupported("train_dtype", f"training precisions: {', '.join(PRECISIONS)}")
    device = config["train_device"]
    text = DEVICES.get(device, device)
    if text in ("auto", "cpu", "mps", "cuda") or re.fullmatch(r"cuda:\d+", text):
        out.set("training.device", text)
    else:
        out.set("training.device", "auto")
        config.unsupported("train_device", "devices: cpu, cuda, cuda:N, mps; auto here")
    if config["multi_gpu"]:
        config.unsupported("multi_gpu", "launch with torchrun for several GPUs; the config does not say it")
    else:
        for key in (
            "device_indexes",
            "gradient_reduce_precision",
            "fused_gradient_reduce",
            "async_gradient_reduce",
            "async_gradient_reduce_buffer",
        ):
            config.ignore(key, "multi_gpu is off")
    out.set("training.compile", bool(config["compile"]))  # both compile the denoiser's repeated blocks


def map_ema(config: View, out: Target) -> bool:
    mode = config["ema"]
    out.set("training.ema.enabled", mode != "OFF")
    if mode == "OFF":
        config.ignore("ema_decay", "ema is OFF")
        config.ignore("ema_update_step_interval", "ema is OFF")
        return False
    out.set("training.ema.device", EMA_DEVICES[mode])
    out.set("training.ema.decay", config["ema_decay"])
    out.set("training.ema.update_every", config["ema_update_step_interval"])
    return True


PERTURBATION = (
    "OneTrainer's perturbation enlarges the noise of both the input and the target; ours "
    "(noise.input_perturbation) perturbs the input only"
)


def map_noise(config: View, out: Target, spec: FamilySpec) -> None:
    out.set("noise.offset", config["offset_noise_weight"])
    config.refuse("perturbation_noise_weight", PERTURBATION)
    out.set("noise.timesteps.min_strength", config["min_noising_strength"])
    out.set("noise.timesteps.max_strength", config["max_noising_strength"])
    distribution = config["timestep_distribution"]
    ours = DISTRIBUTION_NAMES.get(distribution)
    allowed = {value.value for value in DISTRIBUTIONS[spec.objective]}
    weight, bias = config["noising_weight"], config["noising_bias"]
    if ours not in allowed:
        config.unsupported("timestep_distribution", f"{spec.title} models train with: {', '.join(sorted(allowed))}")
        ours = "uniform"
    out.set("noise.timesteps.distribution", ours)
    if ours == "logit-normal":
        out.set("noise.timesteps.mean", bias)
        out.set("noise.timesteps.std", weight + 1)
    elif ours == "sigmoid":
        out.set("noise.timesteps.steepness", weight)
        out.set("noise.timesteps.center", bias + 0.5)
    else:
        config.ignore("noising_weight", f"not used by the {distribution} distribution")
        config.ignore("noising_bias", f"not used by the {distribution} distribution")
    if spec.objective is Objective.FLOW_MATCHING:
        out.set("noise.shift", config["timestep_shift"])
        out.set("noise.dynamic_shift", config["dynamic_timestep_shifting"])
    else:
        config.refuse("timestep_shift", f"{spec.title} models sample timesteps without a shift")
        config.refuse("dynamic_timestep_shifting", f"{spec.title} models sample timesteps without a shift")


def map_loss(config: View, out: Target, spec: FamilySpec) -> None:
    strengths = {key: config[key] for key in LOSS_STRENGTHS}
    used = [key for key, value in strengths.items() if value]
    if len(used) == 1 and strengths[used[0]] == 1.0:
        out.set("loss.type", LOSS_STRENGTHS[used[0]])
    else:
        out.set("loss.type", "mse")
        for key in used or ["mse_strength"]:
            config.unsupported(key, "one loss at strength 1 (mse, mae, huber or log-cosh), not a mix")
    if "huber_strength" in used:
        out.set("loss.huber_delta", config["huber_delta"])
    else:
        config.ignore("huber_delta", "huber_strength is 0")
    config.ignore("vb_loss_strength", "only models that predict their variance use it")
    weight = config["loss_weight_fn"]
    ours = LOSS_WEIGHT_NAMES.get(weight)
    allowed = {value.value for value in WEIGHTINGS[spec.objective]}
    if ours not in allowed:
        config.unsupported("loss_weight_fn", f"{spec.title} models weigh the loss by: {', '.join(sorted(allowed))}")
        ours = "none"
    out.set("loss.weighting", ours)
    if ours == "min-snr-gamma":
        out.set("loss.gamma", config["loss_weight_strength"])
    elif weight != "P2":
        config.ignore("loss_weight_strength", f"not used by {weight}")
