"""Progress displays: stats formatting, throttled plain lines, strict JSON lines, and the rich bars."""

from __future__ import annotations

import io
import json

from rich.console import Console

from onetrainer.ui.progress import JsonDisplay, PlainDisplay, RichDisplay, format_duration, format_stats, open_display

STEP = {
    "event": "step",
    "step": 3,
    "total_steps": 10,
    "epoch": 0,
    "epochs": 2,
    "loss": 0.12345,
    "smoothed_loss": 0.2,
    "lr": {"unet": 1e-4},
    "steps_per_s": 2.5,
    "images_per_s": 10.0,
    "eta_s": 125.0,
    "memory_allocated_gb": None,
}


def test_format_stats_shows_every_number() -> None:
    text = format_stats(STEP)
    assert "loss 0.1235 (avg 0.2000)" in text
    assert "lr 1.00e-04" in text
    assert "2.50 steps/s" in text
    assert "10.0 img/s" in text
    assert "ETA 0:02:05" in text
    assert "GPU" not in text


def test_format_stats_shows_flops_and_the_utilisation_where_known() -> None:
    assert "FLOP" not in format_stats(STEP)
    assert "123.4 TFLOP/s (MFU 12.5 %)" in format_stats({**STEP, "flops_per_s": 123.4e12, "mfu": 0.125})
    assert "2.5 GFLOP/s ·" in format_stats({**STEP, "flops_per_s": 2.5e9, "mfu": None})
    assert "FLOP" not in format_stats({**STEP, "flops_per_s": None})


def test_format_duration_handles_unknown() -> None:
    assert format_duration(None) == "-:--:--"
    assert format_duration(3725) == "1:02:05"


def test_plain_display_throttles_step_lines_but_prints_the_last_and_all_messages() -> None:
    lines: list[str] = []
    now = [0.0]
    display = PlainDisplay(lines.append, interval_s=10, clock=lambda: now[0])
    for step in range(1, 11):
        display({**STEP, "step": step})
        now[0] += 1.0
    display({"event": "backup", "message": "backup written"})
    assert [line.split()[3] for line in lines[:-1]] == ["1/10", "10/10"]
    assert lines[0].startswith("epoch 1/2 step 1/10 loss")
    assert lines[-1] == "backup written"


def test_json_display_writes_strict_json_lines() -> None:
    stream = io.StringIO()
    display = JsonDisplay(stream)
    display({**STEP, "loss": float("nan")})
    display({"event": "done", "message": "finished"})
    records = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert records[0]["loss"] is None
    assert records[0]["lr"] == {"unet": 1e-4}
    assert records[1]["event"] == "done"
    assert "NaN" not in stream.getvalue()


def test_rich_display_renders_the_caching_and_training_bars() -> None:
    console = Console(file=io.StringIO(), width=200, force_terminal=False)
    with RichDisplay(console) as display:
        display({"event": "cache", "stage": "cache-images", "done": 4, "total": 4})
        display({"event": "start", "step": 0, "total_steps": 10, "epochs": 2, "epoch": 0})
        display(STEP)
        display({"event": "sample", "message": "preview written"})
    output = console.file.getvalue()
    assert "caching: cache-images" in output
    assert "epoch 1/2" in output
    assert "3/10" in output
    assert "preview written" in output


def test_open_display_picks_by_mode() -> None:
    assert isinstance(open_display(json_lines=True), JsonDisplay)
    assert isinstance(open_display(json_lines=False, interactive=False), PlainDisplay)
    assert isinstance(open_display(json_lines=False, interactive=True), RichDisplay)


def test_memory_is_labelled_by_its_kind() -> None:
    gpu = {**STEP, "memory_kind": "gpu", "memory_allocated_gb": 1.5, "memory_peak_gb": 2.0}
    ram = {**STEP, "memory_kind": "ram", "memory_allocated_gb": 0.73, "memory_peak_gb": 0.81}
    assert "GPU 1.5/2.0 GiB" in format_stats(gpu)
    assert "RAM 0.7/0.8 GiB" in format_stats(ram)


def test_an_80_column_terminal_keeps_the_epoch_bar_count_eta_and_every_statistic() -> None:
    """Beside long statistics, rich used to squeeze the epoch, bar, step count and ETA down to 'epo…'."""
    console = Console(file=io.StringIO(), width=80, force_terminal=False)
    long_stats = {
        **STEP,
        "step": 5000,
        "total_steps": 10000,
        "epoch": 11,
        "epochs": 50,
        "lr": {"unet": 1e-4, "text_encoder": 5e-5},
        "memory_kind": "ram",
        "memory_allocated_gb": 1.23,
        "memory_peak_gb": 1.5,
    }
    with RichDisplay(console) as display:
        display({"event": "start", "step": 0, "total_steps": 10000, "epochs": 50, "epoch": 0})
        display(long_stats)
    lines = console.file.getvalue().splitlines()
    bar_line = next(line for line in lines if line.startswith("epoch 12/50"))
    assert "━━━━━━━━━━" in bar_line
    assert "5000/10000" in bar_line
    assert "ETA 0:02:05" in bar_line
    assert all(len(line) <= 80 for line in lines)
    text = " ".join(" ".join(lines).split())
    for part in ("loss 0.1235 (avg 0.2000)", "lr 1.00e-04 5.00e-05", "2.50 steps/s", "10.0 img/s", "RAM 1.2/1.5 GiB"):
        assert part in text
