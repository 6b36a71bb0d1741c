"""May this config continue that backup? Refuse changes to what is trained; allow harmless ones.

A resumed run restores the trained tensors, the optimizer's state (its moments and step counts), the
schedule's position and the data plan's position from the backup, so a changed dataset, model,
method, adapter shape, optimizer or seed would either break the continuation or be silently ignored.
Those are refused, listing every differing key.

Two kinds of change are allowed:
- `HARMLESS_KEYS`: what only affects when and where things are written (cadences, outputs, logs, the
  cache), where and how fast the steps run (device, threads, compilation, memory layout, read-back lag),
  how images are checked (a changed data plan is warned about by its fingerprint), and the run's length
  (epochs, max_steps), to extend a finished run;
- `RETUNABLE_KEYS`: how the run is optimised, not what it trains. After a divergence the way on is
  the last good backup with a lower learning rate. The optimizer and scheduler state restored from
  a backup carry the old values, so `reapply_settings` puts this config's back over them: the
  resumed run really uses the new learning rates, schedule, warm-up and weight decay, while keeping
  what the optimizer has learned. Clipping, precision, frozen weight dtypes and checkpointing are
  read from the config at every step anyway. An unchanged config resumes bit-exactly.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import yaml
from pydantic import ValidationError

from onetrainer.util.config.schema import TrainConfig
from onetrainer.util.config.types import CHECK_PATHS
from onetrainer.util.errors import ConfigError, ConfigProblem, UserError

if TYPE_CHECKING:
    import torch

HARMLESS_KEYS: tuple[str, ...] = (
    "preset",
    "workspace",
    "sampling",
    "saving",
    "logging",
    "training.epochs",
    "training.max_steps",
    "training.device",
    "training.threads",
    "training.compile",
    "training.channels_last",
    "training.read_back_lag",
    "training.ema.for_samples",
    "training.ema.for_saves",
    "training.ema.device",
    "data.workers",
    "data.prefetch",
    "data.cache_dir",
    "data.clear_cache",
    "data.encode_batch_size",
    "data.verify_images",
    "data.strict",
    "data.max_image_pixels",
    "parts.*.offload_blocks",
    "training.activation_offload",
)
"""Dotted keys (and everything below them) that may differ between a backup and the resuming config."""

LAST_BITS_KEYS = ("training.compile", "training.channels_last")
"""Harmless keys that still change the last bits of the results (other kernels): said when they change."""

RETUNABLE_KEYS: tuple[str, ...] = (
    "training.learning_rate",
    "parts.*.learning_rate",
    "embedding.learning_rate",
    "training.lr_scheduler",
    "training.warmup",
    "training.lr_cycles",
    "training.lr_power",
    "training.lr_min_factor",
    "training.weight_decay",
    "training.max_grad_norm",
    "training.precision",
    "parts.*.weight_dtype",
    "model.dtype",
    "training.gradient_checkpointing",
    "training.fused_backward",
    "training.stochastic_rounding",
    "training.optimizer_offload",
)
"""Optimisation settings that may change on resume; the resumed run uses the new values (`*`: any part)."""

_GROUP_SETTINGS = ("initial_lr", "weight_decay", "warmup_steps", "fused", "foreach")
"""Per-group optimizer values that come from the config (`warmup_steps`: schedule-free AdamW's). `fused` and
`foreach` too: torch restores a backup's, but decided at construction whether the step takes the device's skip
flag (`found_inf`), which only the fused kernel may be given."""


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        flat: dict[str, Any] = {}
        for key, item in value.items():
            flat.update(_flatten(item, f"{prefix}.{key}" if prefix else str(key)))
        return flat or {prefix: {}}
    if isinstance(value, list):
        flat = {}
        for index, item in enumerate(value):
            flat.update(_flatten(item, f"{prefix}.{index}"))
        return flat or {prefix: []}
    return {prefix: value}


def _may_change(key: str) -> bool:
    return any(_covers(allowed, key) for allowed in (*HARMLESS_KEYS, *RETUNABLE_KEYS))


def _covers(allowed: str, key: str) -> bool:
    """Whether dotted `key` is `allowed` or below it; a `*` segment of `allowed` matches any one segment."""
    pattern, parts = allowed.split("."), key.split(".")
    if len(parts) < len(pattern):
        return False
    return all(want in ("*", have) for want, have in zip(pattern, parts, strict=False))


def differing_keys(saved: dict[str, Any], current: dict[str, Any]) -> list[ConfigProblem]:
    """The keys whose values differ and matter, each with its backup value and the new one."""
    old = _flatten(saved)
    new = _flatten(current)
    problems = []
    for key in sorted(set(old) | set(new)):
        if _may_change(key) or old.get(key) == new.get(key):
            continue
        was = old.get(key, "(absent)")
        now = new.get(key, "(absent)")
        problems.append(ConfigProblem(key, f"was {was!r} in the backup, now {now!r}"))
    return problems


BEFORE_THE_KEY: dict[str, tuple[str, Any]] = {"training.ema.warmup": ("training.ema.enabled", False)}
"""Keys whose default is not what a backup written before the key existed trained with: key -> (the key that
makes it matter, the value such a backup trained with). An EMA backup from before the warm-up existed
averaged without one: continuing it with the warm-up would change its decay mid-run, so a resuming config
must say `training.ema.warmup: false` (a difference listed like any other)."""


def _with_defaults(saved: dict[str, Any]) -> dict[str, Any]:
    """The backup's config with keys added since it was written at their defaults (which is what it
    trained with, except `BEFORE_THE_KEY`), so a newer version can continue an older backup; as written if it
    no longer validates."""
    try:
        filled = TrainConfig.model_validate(saved, context={CHECK_PATHS: False}).model_dump(mode="json")
    except (ValidationError, ConfigError):
        return saved
    written, now = _flatten(saved), _flatten(filled)
    for key, (condition, value) in BEFORE_THE_KEY.items():
        if key not in written and now.get(condition) is True:
            _assign(filled, key, value)
    return filled


def _assign(config: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, last = dotted.split(".")
    node = config
    for part in parents:
        node = node[part]
    node[last] = value


def _dora_format_change(saved: dict[str, Any], current: dict[str, Any]) -> list[ConfigProblem]:
    """A DoRA's magnitudes are trained along the axis its save format's loaders read them on
    (`model.adapters.dora`), so for a DoRA `saving.format` decides what trains."""
    dora = saved.get("method") == "lora" and (saved.get("lora") or {}).get("type") == "dora"
    was, now = ((config.get("saving") or {}).get("format") for config in (saved, current))
    if not dora or was == now:
        return []
    message = f"was {was!r} in the backup, now {now!r}: a DoRA's magnitudes are trained along the axis its format reads"
    return [ConfigProblem("saving.format", message)]


def compute_record(device: torch.device) -> dict[str, Any]:
    """What decides the last bits of a step besides the config, for the backup: on the CPU, the thread count
    (`training.threads: auto` depends on the machine's cores and on `data.workers`)."""
    import torch

    return {"threads": torch.get_num_threads()} if device.type == "cpu" else {}


def last_bits_changes(
    config: TrainConfig, backup_config_yaml: str, record: dict[str, Any], device: torch.device
) -> str:
    """The allowed changes since the backup that make the resumed run compute other last bits than the run never
    stopped would have ("" when none): it continues, but not bit-exactly."""
    saved = _flatten(_with_defaults(yaml.safe_load(backup_config_yaml) or {}))
    current = _flatten(config.model_dump(mode="json"))
    changed = [key for key in LAST_BITS_KEYS if saved.get(key) != current.get(key)]
    changes = [f"{key} was {saved.get(key)!r}, now {current.get(key)!r}" for key in changed]
    threads = compute_record(device).get("threads")
    if record.get("threads") not in (None, threads):
        changes.append(f"the run used {record['threads']} CPU threads, now {threads} (training.threads)")
    if not changes:
        return ""
    return (
        f"{'; '.join(changes)}: the run continues, but its results differ in the last bits from the run never stopped"
    )


def check_resume_compatible(config: TrainConfig, backup_config_yaml: str, *, where: str) -> None:
    try:
        loaded = yaml.safe_load(backup_config_yaml) or {}
    except yaml.YAMLError as error:
        raise UserError(
            f"the backup's config.yaml is damaged ({error})",
            where=where,
            hint="Resume from another backup (`--resume backups/step-NNNNNNNN`).",
        ) from None
    saved = _with_defaults(loaded if isinstance(loaded, dict) else {})
    current = config.model_dump(mode="json")
    problems = [*differing_keys(saved, current), *_dora_format_change(saved, current)]
    if not problems:
        return
    listing = "\n".join(f"  • {problem}" for problem in problems)
    raise UserError(
        f"the config changes what this backup trained, so it cannot continue it:\n{listing}",
        where=where,
        hint="Resume with the original values of these keys, or start a new run in a new workspace. "
        "Cadences, outputs, logging, the run's length and the optimisation settings "
        "(learning rates, schedule, warm-up, weight decay, clipping, precision) may change.",
    )


def optimizer_settings(optimizer: torch.optim.Optimizer) -> list[dict[str, Any]]:
    """The per-group values this config gave the optimizer, taken before a backup's state replaces them."""
    return [{key: group[key] for key in _GROUP_SETTINGS if key in group} for group in optimizer.param_groups]


def reapply_settings(
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LambdaLR,
    settings: list[dict[str, Any]],
) -> None:
    """Put this config's values (from `optimizer_settings`) back over a restored backup's.

    The schedule keeps its restored position; each group's learning rate becomes this config's base
    rate times this config's schedule factor there, computed as the scheduler itself computes it, so
    an unchanged config gets back exactly the learning rates the backup held.
    """
    import torch

    for group, values in zip(optimizer.param_groups, settings, strict=True):
        group.update(values)
        if group.get("fused") or group.get("capturable"):
            # torch restored each step counter as the backup's kernel keeps it (a CPU tensor); the fused and
            # capturable kernels want it beside the weights, in fp32
            for param in group["params"]:
                step = optimizer.state.get(param, {}).get("step")
                if isinstance(step, torch.Tensor):
                    optimizer.state[param]["step"] = step.to(param.device, torch.float32)
    scheduler.base_lrs = [group["initial_lr"] for group in optimizer.param_groups]
    for group, base, factor in zip(optimizer.param_groups, scheduler.base_lrs, scheduler.lr_lambdas, strict=True):
        group["lr"] = base * factor(scheduler.last_epoch)
