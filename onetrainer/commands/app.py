"""The `onetrainer` Typer application: global options, error handling and command registration.

Commands are thin: each one parses its arguments and calls one library function. Errors raised by
the library are rendered here, once, as a short panel with the exit code of their class
(0 ok, 1 runtime failure, 2 usage or config error, 130 interrupted); `--debug` adds the traceback.
SIGTERM takes Ctrl-C's path in every command (see `_sigterm_as_interrupt`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
from collections.abc import Iterator
from types import FrameType
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

from onetrainer import __version__
from onetrainer.commands import caption, convert, export, import_config, inspect, mask, presets, sample, train
from onetrainer.commands.help import HelpfulCommand, examples_epilog, show_words
from onetrainer.util.errors import OneTrainerError

_state = {"debug": False}


class _ErrorHandlingGroup(TyperGroup):
    """Turns library exceptions into rendered messages and exit codes for every subcommand."""

    def get_params(self, ctx: Any) -> list[Any]:
        params = super().get_params(ctx)
        show_words(params)
        return params

    def invoke(self, ctx: Any) -> Any:
        from onetrainer.ui.console import stderr
        from onetrainer.ui.errors import render_error, render_unexpected

        try:
            with _sigterm_as_interrupt():
                return super().invoke(ctx)
        except OneTrainerError as error:
            if _state["debug"]:
                stderr.print_exception()
            render_error(error)
            raise typer.Exit(error.exit_code) from None
        except KeyboardInterrupt as interrupt:
            stderr.print(f"[yellow]Interrupted{f' by {interrupt}' if str(interrupt) else ''}.[/]")
            raise typer.Exit(130) from None
        except Exception as error:
            if _is_cli_exception(error):
                raise
            if _state["debug"]:
                stderr.print_exception()
            else:
                render_unexpected(error)
            raise typer.Exit(1) from None


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """For the block, SIGTERM raises KeyboardInterrupt like Ctrl-C does.

    Python's default for SIGTERM ends the process on the spot: no message, and the temporary file of
    any write in progress stays behind. As an exception it unwinds instead, so the atomic writers
    clean up, the trainer's own handling applies, and the command exits 130 with a message. Handlers
    can only be installed from the main thread; elsewhere the default stays.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _is_cli_exception(error: Exception) -> bool:
    """Typer's own exits and usage errors (it vendors click) keep their normal handling."""
    return isinstance(error, (typer.Exit, typer.Abort)) or type(error).__module__.startswith("typer")


app = typer.Typer(
    name="onetrainer",
    cls=_ErrorHandlingGroup,
    help="Train diffusion models (LoRA, full fine-tune, embeddings) from the command line.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"onetrainer {__version__}")
        raise typer.Exit()


@app.callback()
def _global_options(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_print_version, is_eager=True, help="Print the version and exit."),
    ] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show full tracebacks on errors.")] = False,
) -> None:
    _state["debug"] = debug
    if not debug:
        _quiet_libraries()


_LIBRARY_QUIET = {
    "TRANSFORMERS_VERBOSITY": "error",
    "DIFFUSERS_VERBOSITY": "error",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
}


def _quiet_libraries() -> None:
    """Keep the ML libraries' own banners, loading bars and import-time notes out of our output.

    The environment variables are read when those libraries are first imported, which happens after
    this (imports are lazy); a user's explicit setting wins. diffusers and transformers import torchao
    and bitsandbytes whenever they are installed, so those libraries' import-time notes would start
    every run of a `[quant]` install, quantised or not; their errors still show.
    """
    from onetrainer.util.quiet import NOISY_LOGGERS

    for name, value in _LIBRARY_QUIET.items():
        os.environ.setdefault(name, value)
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)


COMMANDS = {
    "presets": presets,
    "train": train,
    "sample": sample,
    "caption": caption,
    "mask": mask,
    "inspect": inspect,
    "convert": convert,
    "import": import_config,
    "export": export,
}
"""Command name -> its module, which holds a function named like the module (`import` is a Python keyword,
so its module is `import_config`) and its `EXAMPLES`."""

for _name, _module in COMMANDS.items():
    _function = getattr(_module, _module.__name__.rpartition(".")[2])
    app.command(name=_name, cls=HelpfulCommand, epilog=examples_epilog(_module.EXAMPLES))(_function)


def main() -> None:
    """Console-script entry point."""
    sys.exit(app(prog_name="onetrainer", standalone_mode=True))
