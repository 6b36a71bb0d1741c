"""`onetrainer train CONFIG --gpus N`: start torchrun with N ranks on this machine, as the user would.

The launcher runs `python -m onetrainer.trainer.launch TORCHRUN-OPTIONS -m onetrainer train ...`:
torchrun itself (`torch.distributed.run.main`), with the rendezvous on a free loopback port, and a
quiet ending: a run stopped by a signal exits 130 like a single-process one, and a failed rank's exit
code becomes torchrun's, instead of torchrun's traceback.

Signals: torchrun starts each rank in a session of its own, so a Ctrl-C in the terminal reaches the
launcher and torchrun only; torchrun sends it on to every rank once, and each rank stops after the
current step with a backup (see `trainer.signals`). torchrun is started in its own session too, and
the launcher forwards what it receives, so a signal sent to the launcher alone (a job scheduler's
SIGTERM) stops the run the same way. torchrun gives the ranks `SHUTDOWN_TIMEOUT_S` to write their
backup before it kills them, where it has that option (`shutdown_timeout_option`); older versions wait
their fixed 30 s.
"""

from __future__ import annotations

import os
import shlex
import signal
import socket
import subprocess
import sys
from collections.abc import Sequence
from types import FrameType

from onetrainer.trainer.distributed import LAUNCH_COMMAND_ENV

SHUTDOWN_TIMEOUT_S = 900
"""How long torchrun waits, after forwarding a stop signal, for the ranks to finish the step and write
their backup before it kills them (its own default, 30 s, is shorter than a large model's backup)."""

INTERRUPTED_EXIT = 130


def free_port() -> int:
    """A TCP port on the loopback interface that nothing listens on now (the rendezvous port)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def shutdown_timeout_option() -> list[str]:
    """torchrun's `--shutdown-timeout`, where this torch's torchrun has it (recent versions only; the project
    allows older ones, whose torchrun would refuse the unknown option and start nothing).

    Asked of torchrun's own parser, the one public way: an option it knows comes back parsed, one it does
    not among the leftovers.
    """
    from torch.distributed.run import get_args_parser

    option = f"--shutdown-timeout={SHUTDOWN_TIMEOUT_S}"
    parsed, _ = get_args_parser().parse_known_args([option, "onetrainer"])
    return [option] if getattr(parsed, "shutdown_timeout", None) is not None else []


def torchrun_arguments(count: int, train_arguments: Sequence[str], *, port: int) -> list[str]:
    """torchrun's command line for `count` ranks on this machine running `onetrainer train ARGUMENTS`."""
    return [
        f"--nproc-per-node={count}",
        "--nnodes=1",
        "--master-addr=127.0.0.1",
        f"--master-port={port}",
        *shutdown_timeout_option(),
        "-m",
        "onetrainer",
        "train",
        *train_arguments,
    ]


def launch_ranks(count: int, train_arguments: Sequence[str], *, command: Sequence[str]) -> int:
    """Run `onetrainer train ARGUMENTS` on `count` ranks under torchrun; returns the exit code.

    `command` is the command line the user typed (with `--gpus`), which the ranks print in messages
    that say how to continue the run.
    """
    arguments = torchrun_arguments(count, train_arguments, port=free_port())
    environment = {**os.environ, LAUNCH_COMMAND_ENV: shlex.join(command)}
    process = subprocess.Popen(
        [sys.executable, "-m", "onetrainer.trainer.launch", *arguments], env=environment, start_new_session=True
    )

    def forward(signum: int, frame: FrameType | None) -> None:
        process.send_signal(signum)

    previous = {signum: signal.signal(signum, forward) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        return process.wait()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def run_torchrun(arguments: Sequence[str]) -> int:
    """torchrun with `arguments`; a stop by signal exits 130, and a failed rank's exit code is returned."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import main

    try:
        main(list(arguments))
    except SignalException:
        return INTERRUPTED_EXIT
    except ChildFailedError as error:
        rank, failure = error.get_first_failure()
        print(f"onetrainer: rank {rank} ended with exit code {failure.exitcode}", file=sys.stderr)
        return failure.exitcode if failure.exitcode > 0 else 1
    return 0


if __name__ == "__main__":
    sys.exit(run_torchrun(sys.argv[1:]))
