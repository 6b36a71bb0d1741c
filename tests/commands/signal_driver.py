"""Run the onetrainer CLI with one function held at a known point, so that a test can signal it there.

    python signal_driver.py MODULE:FUNCTION[:NAME] [--after] -- ONETRAINER-ARGUMENTS...

The first call of MODULE.FUNCTION (with NAME given: the first with a path argument whose name matches
NAME, a shell pattern such as `*.safetensors`) prints the line `{"event": "held"}` on stdout and
waits: until a signal handler raises (a second Ctrl-C, SIGTERM outside the step loop) or, when the
environment variable ONETRAINER_TEST_RELEASE names a file, until that file exists. With `--after` the
call runs first and the wait follows, so whatever it wrote to a temporary file is still there when
the signal arrives. Signals then land at a known point of the program whatever the machine's load,
which makes the tests deterministic.
"""

from __future__ import annotations

import fnmatch
import importlib
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HOLD_LIMIT_S = 300.0


def _hold(release: str | None) -> None:
    print(json.dumps({"event": "held"}), flush=True)
    deadline = time.monotonic() + HOLD_LIMIT_S
    while time.monotonic() < deadline:
        if release is not None and Path(release).exists():
            return
        time.sleep(0.02)
    raise SystemExit(f"held for {HOLD_LIMIT_S} s without being signalled or released")


def _names(arguments: tuple[Any, ...]) -> set[str]:
    return {Path(argument).name for argument in arguments if isinstance(argument, (str, os.PathLike))}


def _held(original: Callable[..., Any], name: str | None, *, after: bool) -> Callable[..., Any]:
    release = os.environ.get("ONETRAINER_TEST_RELEASE")
    done = False

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        nonlocal done
        if done or (name is not None and not any(fnmatch.fnmatchcase(found, name) for found in _names(args))):
            return original(*args, **kwargs)
        done = True
        if after:
            result = original(*args, **kwargs)
            _hold(release)
            return result
        _hold(release)
        return original(*args, **kwargs)

    return wrapper


def main() -> None:
    spec, *options = sys.argv[1 : sys.argv.index("--")]
    module_name, function, *name = spec.split(":")
    module = importlib.import_module(module_name)
    setattr(module, function, _held(getattr(module, function), name[0] if name else None, after="--after" in options))
    sys.argv = ["onetrainer", *sys.argv[sys.argv.index("--") + 1 :]]

    from onetrainer.commands.app import main as onetrainer

    onetrainer()


if __name__ == "__main__":
    main()
