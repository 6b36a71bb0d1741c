"""The launcher of `onetrainer train --gpus N`: torchrun's command line, the signals it passes on, and torchrun
stopping when the launcher dies."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from onetrainer.trainer import launch
from onetrainer.trainer.launch import SHUTDOWN_TIMEOUT_S, torchrun_arguments


def _torchrun_parser(*, shutdown_timeout: bool) -> argparse.ArgumentParser:
    """torchrun's parser as far as the launcher's question goes: recent versions know `--shutdown-timeout`,
    older ones (which the project allows) do not."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--nproc-per-node")
    if shutdown_timeout:
        parser.add_argument("--shutdown-timeout", type=int)
    parser.add_argument("training_script")
    parser.add_argument("training_script_args", nargs=argparse.REMAINDER)
    return parser


def _torchrun_parser_without_shutdown_timeout() -> argparse.ArgumentParser:
    return _torchrun_parser(shutdown_timeout=False)


def test_torchrun_gets_the_shutdown_timeout_where_it_knows_the_option(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch.distributed.run

    monkeypatch.setattr(torch.distributed.run, "get_args_parser", lambda: _torchrun_parser(shutdown_timeout=True))
    arguments = torchrun_arguments(2, ["run.yaml"], port=29500)
    assert f"--shutdown-timeout={SHUTDOWN_TIMEOUT_S}" in arguments
    assert arguments[-4:] == ["-m", "onetrainer", "train", "run.yaml"]


def test_an_older_torchrun_without_the_option_is_not_given_it(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch.distributed.run

    monkeypatch.setattr(torch.distributed.run, "get_args_parser", _torchrun_parser_without_shutdown_timeout)
    arguments = torchrun_arguments(2, ["run.yaml"], port=29500)
    assert not any(argument.startswith("--shutdown-timeout") for argument in arguments)
    assert arguments[-4:] == ["-m", "onetrainer", "train", "run.yaml"]


def test_a_sighup_to_the_launcher_reaches_torchrun_as_a_stop_request(monkeypatch: pytest.MonkeyPatch) -> None:
    """The SSH session that started the run dropped: torchrun gets SIGTERM (the ranks take no SIGHUP)."""
    sent: list[int] = []

    class Torchrun:
        def send_signal(self, signum: int) -> None:
            sent.append(signum)

        def wait(self) -> int:
            os.kill(os.getpid(), signal.SIGHUP)
            os.kill(os.getpid(), signal.SIGINT)
            return 130

    def start(command: list[str], environment: dict[str, str]) -> tuple[Torchrun, int]:
        _, write_end = os.pipe()
        return Torchrun(), write_end

    monkeypatch.setattr(launch, "start_watched", start)
    before = signal.getsignal(signal.SIGHUP)
    assert launch.launch_ranks(2, ["run.yaml"], command=["onetrainer", "train", "run.yaml"]) == 130
    assert sent == [signal.SIGTERM, signal.SIGINT]
    assert signal.getsignal(signal.SIGHUP) == before


LAUNCHER = """
import os, sys, time
from onetrainer.trainer.launch import start_watched
process, _ = start_watched([sys.executable, "-c", sys.argv[1], sys.argv[2]], dict(os.environ))
time.sleep(120)
"""

TORCHRUN = """
import os, signal, sys, time
from pathlib import Path
from onetrainer.trainer.launch import stop_when_launcher_dies
folder = Path(sys.argv[1])
signal.signal(signal.SIGTERM, lambda *_: (folder.joinpath("stopped").write_text("SIGTERM"), sys.exit(0)))
stop_when_launcher_dies()
folder.joinpath("pid").write_text(str(os.getpid()))
time.sleep(120)
"""


def _wait_for(path: Path, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while not path.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    return path.exists()


def test_torchrun_is_asked_to_stop_when_the_launcher_dies(tmp_path: Path) -> None:
    """Killed outright (no handler runs), the launcher still ends the run: torchrun, in a session of its own,
    gets SIGTERM instead of training on as an orphan that holds the workspace."""
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    launcher = subprocess.Popen([sys.executable, "-c", LAUNCHER, TORCHRUN, str(tmp_path)], env=environment)
    try:
        assert _wait_for(tmp_path / "pid", 30), "torchrun's stand-in did not start"
        assert not (tmp_path / "stopped").exists()
        launcher.kill()
        launcher.wait(timeout=10)
        assert _wait_for(tmp_path / "stopped", 10)
        assert (tmp_path / "stopped").read_text() == "SIGTERM"
    finally:
        launcher.kill()
        if (tmp_path / "pid").exists() and not (tmp_path / "stopped").exists():
            os.kill(int((tmp_path / "pid").read_text()), signal.SIGKILL)
