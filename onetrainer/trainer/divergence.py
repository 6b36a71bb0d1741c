"""Stopping a run whose numbers stopped being numbers, before anything non-finite reaches a file.

Two checks, each where it costs least:
- every step, the loss and the gradient norm, before the optimizer step: one non-finite gradient
  turns every weight it touches into NaN (Adam divides by it), so the run stops with the previous
  step's weights intact (with a fused backward pass, which updates during the pass, with the
  previous step's backups intact: `trainer.step`). The check is read on the host before the
  update, or made on the device, which then skips the update, and read a step or more later
  (`readback`); `check_step` says what stopped the run either way. fp16's gradient scaler is the
  exception: an overflow there is routine, and the step is skipped without stopping, unless it goes on
  for `SKIPPED_STEPS_LIMIT` steps in a row (gradients that no scale makes finite would otherwise skip
  every step to the end of the run, training nothing).
- the weights, before a backup or a save writes them: an update can still overflow.
No non-finite backup is ever written, so the newest backup is always a good one and rolling deletion
never removes the last good backup in favour of a bad one; the message names it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from onetrainer.trainer.backup import backup_step, list_backups
from onetrainer.util.config.parts import WeightDtype
from onetrainer.util.config.training import Precision
from onetrainer.util.errors import RuntimeFailure

if TYPE_CHECKING:
    import torch

    from onetrainer.trainer.readback import StepRecord
    from onetrainer.trainer.session import Session


SKIPPED_STEPS_LIMIT = 50
"""fp16 steps skipped in a row for non-finite gradients before the run stops: the scaler halves its scale at
each, and 50 halvings take its start (2^16) below 2^-34, where no scale is left to find."""


class TrainingDiverged(RuntimeFailure):
    """The loss, the gradients or the weights became NaN or infinite; nothing non-finite was written."""

    title = "Training diverged"


def all_finite(tensors: Iterable[torch.Tensor]) -> bool:
    """Whether every value of every tensor is finite: one host sync per device, not per tensor."""
    import torch

    flags: dict[torch.device, list[torch.Tensor]] = {}
    for tensor in tensors:
        flags.setdefault(tensor.device, []).append(torch.isfinite(tensor.detach()).all())
    return all(bool(torch.stack(group).all()) for group in flags.values())


def _good_backup(session: Session, before_step: int | None) -> tuple[Path | None, str]:
    """The backup to continue from, and what to say about the newest one.

    A step's loss and gradients are a function of the weights before it (and of data and noise, which
    a resume replays exactly), so when they fail at the step right after the newest backup, that
    backup would fail the same way whatever the learning rate: the one before it is named instead.
    """
    newest, step = session.last_backup_path, session.last_backup_step
    if newest is None:
        return None, "no backup was written, so there is none to continue from"
    if before_step is None or step != before_step - 1:
        return newest, f"the newest backup (step {step}) holds finite weights"
    repeats = f"the newest backup (step {step}) holds the weights that gave this, so continuing from it repeats it"
    earlier = [path for path in list_backups(newest.parent) if path != newest]
    if not earlier:
        return None, f"{repeats}, and no earlier backup is left"
    return earlier[-1], f"{repeats}; the one before it (step {backup_step(earlier[-1])}) is good"


def diverged(session: Session, what: str, *, before_step: int | None = None) -> TrainingDiverged:
    """The error for `what` became non-finite: which backup is good (or that none is), and what to change.

    `before_step`: `what` is the loss or the gradients of that step (rather than weights after an update).
    """
    training = session.config.training
    good, kept = _good_backup(session, before_step)
    if good is None and session.last_backup_path is None:
        hints = ["lower training.learning_rate and start again"]
    elif good is None:
        hints = [
            "lower training.learning_rate and start again, in a new workspace or after removing "
            f"{session.workspace.backups} (`saving.backup_keep_last` keeps more backups to go back to)"
        ]
    else:
        command = session.resume_command(None if good == session.last_backup_path else good)
        hints = [
            f"lower training.learning_rate and continue from that backup: `{command} training.learning_rate=...` "
            "(a resume may also change the schedule, warm-up, weight decay, clipping and precision)"
        ]
    if training.max_grad_norm is None and not training.fused_backward:  # (which refuses clipping)
        hints.append("turn training.max_grad_norm on (e.g. 1.0)")
    half = [name for name, part in session.config.parts.items() if part.weight_dtype is WeightDtype.FP16]
    if half:
        hints.insert(0, f"fp16 weights overflow easily: set parts.{half[0]}.weight_dtype=fp32")
    if training.precision is Precision.FP16 or session.config.model.dtype is Precision.FP16:
        hints.insert(0, "fp16 overflows easily (the VAE especially): try bf16 or fp32")
    return TrainingDiverged(
        f"{what}; training stopped and {kept}",
        where=str(good if good is not None else session.workspace.backups),
        hint="; ".join(hints) + ".",
    )


def check_step(session: Session, record: StepRecord) -> None:
    """Stop the run if the step's loss, or its gradients (unless fp16's scaler skips those), are not finite."""
    step, loss = record.step, record.loss
    if not math.isfinite(loss):
        raise diverged(session, f"the loss became {loss} at step {step}, before its update", before_step=step)
    skipped = not math.isfinite(record.grad_norm) and session.run.precision.skips_overflow
    session.skipped_in_a_row = session.skipped_in_a_row + 1 if skipped else 0
    if session.skipped_in_a_row >= SKIPPED_STEPS_LIMIT:
        what = (
            f"the gradients were non-finite at {SKIPPED_STEPS_LIMIT} steps in a row up to step {step} (loss "
            f"{loss:.4g}): fp16's gradient scaler skipped each update, so nothing trained"
        )
        raise diverged(session, what, before_step=step - SKIPPED_STEPS_LIMIT + 1)
    if not math.isfinite(record.grad_norm) and not session.run.precision.skips_overflow:
        when = "during its update" if session.config.training.fused_backward else "before its update"
        what = f"the gradients became non-finite at step {step} (loss {loss:.4g}), {when}"
        raise diverged(session, what, before_step=step)
