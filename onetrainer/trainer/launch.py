"""`onetrainer train CONFIG --gpus N`: start torchrun with N ranks on this machine, as the user would.

The launcher runs `python -m onetrainer.trainer.launch TORCHRUN-OPTIONS -m onetrainer train ...`:
torchrun itself (`torch.distributed.run.main`), with the rendezvous on a free loopback port, and a
quiet ending: a run stopped by a signal exits 130 like a single-process one, and a failed rank's exit
code becomes torchrun's, instead of torchrun's traceback.

Signals: torchrun starts each rank in a session of its own, so a Ctrl-C in the terminal reaches the
launcher and torchrun only; torchrun sends it on to every rank once, and each rank stops after the
current step with a backup (see `trainer.signals`). torchrun is started in its own session too, and
the launcher forwards what it receives, so a signal sent to the launcher alone (a job scheduler's
SIGTERM) stops the run the same way; a SIGHUP (the SSH session that started the run dropped) is
forwarded as SIGTERM, since the ranks take no SIGHUP and it would end them without a backup. torchrun
gives the ranks `SHUTDOWN_TIMEOUT_S` to write their backup before it kills them, where it has that
option (`shutdown_timeout_option`); older versions wait their fixed 30 s.

If the launcher dies anyway (SIGKILL, an out-of-memory kill), torchrun stops the run as if it had been
sent SIGTERM (`stop_when_launcher_dies`), rather than training on as an orphan that holds the workspace.
"""

from __future__ import annotations

import os
import shlex
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Sequence
from types import FrameType

from onetrainer.trainer.distributed import LAUNCH_COMMAND_ENV

SHUTDOWN_TIMEOUT_S = 900
"""How long torchrun waits, after forwarding a stop signal, for the ranks to finish the step and write
their backup before it kills them (its own default, 30 s, is shorter than a large model's backup)."""

INTERRUPTED_EXIT = 130

LAUNCHER_PIPE_ENV = "ONETRAINER_LAUNCHER_PIPE"
"""Set for torchrun's process: the descriptor of the pipe whose other end only the launcher holds."""

FORWARDED = {signal.SIGINT: signal.SIGINT, signal.SIGTERM: signal.SIGTERM, signal.SIGHUP: signal.SIGTERM}
"""What the launcher sends torchrun for each signal it receives (see the module docstring)."""


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
    process, lifeline = start_watched([sys.executable, "-m", "onetrainer.trainer.launch", *arguments], environment)

    def forward(signum: int, frame: FrameType | None) -> None:
        process.send_signal(FORWARDED[signal.Signals(signum)])

    previous = {signum: signal.signal(signum, forward) for signum in FORWARDED}
    try:
        return process.wait()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        os.close(lifeline)


def start_watched(command: Sequence[str], environment: dict[str, str]) -> tuple[subprocess.Popen[bytes], int]:
    """Start `command` (torchrun) in a session of its own, tied to this process by a pipe; returns the process
    and the pipe's write end, which this process holds open until it no longer needs the child.

    A pipe rather than Linux's PR_SET_PDEATHSIG: the kernel closes the write end however this process ends,
    even by SIGKILL, and the child sees that as the end of its read end, at once if it happened before it
    looked (a death signal set up after the parent died is never sent); it needs no `preexec_fn`, which is
    unsafe in a process with threads, and works on every POSIX system.
    """
    read_end, write_end = os.pipe()
    try:
        process = subprocess.Popen(
            list(command),
            env={**environment, LAUNCHER_PIPE_ENV: str(read_end)},
            pass_fds=(read_end,),
            start_new_session=True,
        )
    except BaseException:
        os.close(write_end)
        raise
    finally:
        os.close(read_end)
    return process, write_end


def stop_when_launcher_dies() -> None:
    """In torchrun's process: send this process SIGTERM, the stop request torchrun passes on to the ranks,
    once the launcher that started it (`start_watched`) is gone. Nothing without a launcher."""
    descriptor = os.environ.pop(LAUNCHER_PIPE_ENV, None)
    if descriptor is None:
        return
    pipe = int(descriptor)

    def watch() -> None:
        while os.read(pipe, 1):  # the launcher never writes: only the end of the pipe comes
            pass
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="launcher-watch", daemon=True).start()


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
    stop_when_launcher_dies()
    sys.exit(run_torchrun(sys.argv[1:]))
