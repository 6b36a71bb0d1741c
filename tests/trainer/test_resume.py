"""Resuming refuses config changes to what is trained, allows cadence/output/length and optimisation
changes, and puts the changed optimisation settings over the restored optimizer state."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from onetrainer.trainer.resume import (
    check_resume_compatible,
    differing_keys,
    last_bits_changes,
    optimizer_settings,
    reapply_settings,
)
from onetrainer.util.config.loader import dump_config, load_config
from onetrainer.util.config.schema import TrainConfig
from onetrainer.util.errors import UserError


def _config(tmp_path: Path, *overrides: str) -> TrainConfig:
    base = ["model.base=org/model", f"data.concepts.0.path={tmp_path}", "training.learning_rate=1e-4"]
    return load_config(None, [*base, *overrides])


def test_harmless_changes_are_allowed(tmp_path: Path) -> None:
    saved = dump_config(_config(tmp_path))
    changed = _config(
        tmp_path,
        "saving.backup_every=10 steps",
        "saving.output=elsewhere.safetensors",
        "sampling.every=1 epoch",
        "training.epochs=50",
        "logging.tensorboard=false",
        "training.ema.device=cpu",
        "data.encode_batch_size=2",
        "data.max_image_pixels=1000000",
        "data.strict=true",
        "data.prefetch=2",
        f"data.cache_dir={tmp_path / 'elsewhere'}",
        "model.dtype=bf16",
    )
    check_resume_compatible(changed, saved, where="backup")


def test_changes_to_what_is_trained_are_refused_with_every_key(tmp_path: Path) -> None:
    saved = dump_config(_config(tmp_path))
    changed = _config(tmp_path, "training.optimizer=sgd", "lora.rank=4", "method=full")
    with pytest.raises(UserError) as error:
        check_resume_compatible(changed, saved, where="backups/step-00000010")
    message = error.value.message
    assert "training.optimizer" in message
    assert "lora.rank" in message
    assert "was 'adamw' in the backup, now 'sgd'" in message
    assert "saving" not in message
    assert error.value.where == "backups/step-00000010"


def test_a_doras_save_format_decides_what_it_trains_so_it_may_not_change(tmp_path: Path) -> None:
    """The magnitudes train along the axis the format's loaders read (peft: per output, kohya: per input)."""
    saved = dump_config(_config(tmp_path, "lora.type=dora", "saving.format=kohya"))
    with pytest.raises(UserError) as error:
        check_resume_compatible(_config(tmp_path, "lora.type=dora", "saving.format=peft"), saved, where="backup")
    assert "saving.format: was 'kohya' in the backup, now 'peft'" in error.value.message
    lora = dump_config(_config(tmp_path, "saving.format=kohya"))
    check_resume_compatible(_config(tmp_path, "saving.format=peft"), lora, where="backup")


def test_optimisation_settings_may_change(tmp_path: Path) -> None:
    saved = dump_config(_config(tmp_path))
    retuned = _config(
        tmp_path,
        "training.learning_rate=2e-5",
        "parts.unet.learning_rate=1e-5",
        "training.lr_scheduler=cosine",
        "training.warmup=10",
        "training.weight_decay=0.1",
        "training.max_grad_norm=0.5",
        "training.precision=bf16",
    )
    check_resume_compatible(retuned, saved, where="backup")


def test_reapplied_settings_replace_the_restored_ones_at_the_restored_position() -> None:
    def make(lr: float, weight_decay: float) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
        parameter = torch.nn.Parameter(torch.ones(2))
        optimizer = torch.optim.AdamW([{"params": [parameter], "lr": lr}], weight_decay=weight_decay)
        return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: (step + 1) / 10)

    old_optimizer, old_scheduler = make(lr=1.0, weight_decay=0.0)
    for _ in range(3):
        old_optimizer.step()
        old_scheduler.step()
    new_optimizer, new_scheduler = make(lr=0.5, weight_decay=0.2)
    settings = optimizer_settings(new_optimizer)
    new_optimizer.load_state_dict(old_optimizer.state_dict())
    new_scheduler.load_state_dict(old_scheduler.state_dict())
    assert new_optimizer.param_groups[0]["lr"] == 0.4
    reapply_settings(new_optimizer, new_scheduler, settings)
    group = new_optimizer.param_groups[0]
    assert (group["lr"], group["initial_lr"], group["weight_decay"]) == (0.5 * 0.4, 0.5, 0.2)
    new_scheduler.step()
    assert group["lr"] == 0.5 * 0.5


def _resumed_onto_fused(device: str) -> torch.optim.Optimizer:
    """An AdamW that stepped its weights on `device` with torch's unfused kernel, backed up after one step, and
    resumed where the config chooses the fused kernel (this run's settings reapplied over the backup's)."""

    def make(**kernel: bool) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
        parameter = torch.nn.Parameter(torch.ones(2, device=device))
        parameter.grad = torch.ones(2, device=device)
        optimizer = torch.optim.AdamW([{"params": [parameter], "lr": 0.1}], **kernel)
        return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)

    old_optimizer, old_scheduler = make(foreach=False)
    old_optimizer.step()
    new_optimizer, new_scheduler = make(fused=True)
    settings = optimizer_settings(new_optimizer)
    new_optimizer.load_state_dict(old_optimizer.state_dict())
    new_scheduler.load_state_dict(old_scheduler.state_dict())
    reapply_settings(new_optimizer, new_scheduler, settings)
    return new_optimizer


def test_a_resumed_optimizer_keeps_its_own_kernel_choice_and_takes_the_skip_flag() -> None:
    """A backup of a run whose weights were partly in CPU memory holds `fused: None`; resumed where the fused
    kernel is chosen, the step takes the device's skip flag (`found_inf`), which torch's other kernels refuse."""
    new_optimizer = _resumed_onto_fused("cpu")
    group = new_optimizer.param_groups[0]
    assert (group["fused"], group["foreach"]) == (True, None)
    new_optimizer.found_inf = torch.ones(())  # type: ignore[attr-defined]
    before = [param.detach().clone() for param in group["params"]]
    new_optimizer.step()
    assert all(torch.equal(param, old) for param, old in zip(group["params"], before, strict=True)), "skipped"


def test_added_and_removed_list_items_are_differences() -> None:
    problems = differing_keys({"data": {"concepts": [{"path": "a"}]}}, {"data": {"concepts": []}})
    assert [problem.path for problem in problems] == ["data.concepts", "data.concepts.0.path"]


def test_a_backup_written_before_a_key_existed_continues_at_its_default(tmp_path: Path) -> None:
    import yaml

    older = yaml.safe_load(dump_config(_config(tmp_path)))
    del older["training"]["threads"]
    del older["data"]["max_image_pixels"]
    del older["data"]["concepts"][0]["caption"]["prefix"]
    check_resume_compatible(_config(tmp_path), yaml.safe_dump(older), where="backup")


def test_the_thread_count_may_change(tmp_path: Path) -> None:
    check_resume_compatible(_config(tmp_path, "training.threads=3"), dump_config(_config(tmp_path)), where="backup")


def test_changes_that_alter_the_last_bits_are_said_and_others_are_not(tmp_path: Path) -> None:
    saved = dump_config(_config(tmp_path))
    cpu = torch.device("cpu")
    threads = torch.get_num_threads()
    same = last_bits_changes(_config(tmp_path, "sampling.every=1 epoch"), saved, {"threads": threads}, cpu)
    assert same == ""
    kernels = last_bits_changes(_config(tmp_path, "training.channels_last=true"), saved, {"threads": threads}, cpu)
    assert "training.channels_last was False, now True" in kernels
    assert "differ in the last bits" in kernels
    other = last_bits_changes(_config(tmp_path), saved, {"threads": threads + 1}, cpu)
    assert f"used {threads + 1} CPU threads, now {threads}" in other
    assert last_bits_changes(_config(tmp_path), saved, {}, cpu) == "", "a backup from before the record says nothing"


@pytest.mark.gpu
def test_on_a_gpu_a_resumed_fused_optimizer_steps_with_its_counters_beside_the_weights() -> None:
    """torch restores an unfused backup's step counters in CPU memory; the fused CUDA kernel refuses them there."""
    new_optimizer = _resumed_onto_fused("cuda")
    (param,) = new_optimizer.param_groups[0]["params"]
    assert new_optimizer.state[param]["step"].device.type == "cuda"
    new_optimizer.step()
    assert torch.isfinite(param).all()


def test_an_ema_backup_from_before_the_warm_up_continues_only_without_it(tmp_path: Path) -> None:
    """Such a backup averaged without a warm-up: the resumed run must not start one mid-run without a word."""
    import yaml

    older = yaml.safe_load(dump_config(_config(tmp_path, "training.ema.enabled=true")))
    del older["training"]["ema"]["warmup"]
    with pytest.raises(UserError, match=r"training\.ema\.warmup"):
        check_resume_compatible(_config(tmp_path, "training.ema.enabled=true"), yaml.safe_dump(older), where="b")
    check_resume_compatible(
        _config(tmp_path, "training.ema.enabled=true", "training.ema.warmup=false"), yaml.safe_dump(older), where="b"
    )
    without_ema = yaml.safe_load(dump_config(_config(tmp_path)))
    del without_ema["training"]["ema"]["warmup"]
    check_resume_compatible(_config(tmp_path), yaml.safe_dump(without_ema), where="b")  # the key does not matter
