"""The training loop and everything it needs between steps.

Entry points: `loop.train(config, build=components.build_parts, resume=..., progress=...)` trains or
resumes a run; `prepare.fill_cache_only(...)` only fills the data cache; `components.data_report`
reports the data for `--dry-run`. The loop reports progress as event dicts (see `ui/progress.py`).

The pieces, one idea per module: `optimizers` and `schedulers` (built from the `training` section),
`precision` (autocast and fp16 loss scaling), `ema`, `cadence` (when side work is due), `backup`
and `resume` (exact continuation and its compatibility check), `signals` (graceful stop), `metrics`
and `tensorboard` (logs), `previews` and `validation` (side work), `state` (what a backup holds),
`session` (the running objects and their side work), `start` (everything before the first step),
`destinations` (where a run writes: checked before loading, tidied), `divergence` (NaN/inf guards),
`step` (how losses become an update), `readback` (each step's loss and the NaN guard without a host
sync, agreed between ranks on the device), `flops` (FLOPs per step and the model FLOP utilisation),
`workspace` (the run folder's layout), `distributed` (several ranks under torchrun: the process group,
gradient averaging, agreement between ranks), `sharding` (FSDP2 full fine-tunes and their
checkpoint-folder backups), `launch` (`--gpus N`: torchrun started for the user).
"""
