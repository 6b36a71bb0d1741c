"""Which carried wheels to install: `python -m benchmarks.gpu.wheels .whl`.

The GPU machine has no network and its own set of packages (torch, transformers, peft, ...). The
wheels carried in `.whl/` are the versions this checkout is tested with, so each one is installed
when its distribution is missing there or installed at another version; what matches is left alone
(and torch, never carried, stays the machine's own CUDA build). Prints the paths, one a line.
"""

from __future__ import annotations

import sys
from importlib import metadata
from pathlib import Path


def distribution(wheel: Path) -> str:
    """The distribution a wheel file installs (the name before the first dash, PEP 427)."""
    return wheel.name.split("-", 1)[0]


def version(wheel: Path) -> str:
    """The version a wheel file installs (the second dash-separated field, PEP 427)."""
    return wheel.name.split("-")[1]


def installed(name: str) -> str | None:
    """The installed version of distribution `name` (any spelling of - and _), or None."""
    for spelling in {name, name.replace("_", "-"), name.replace("-", "_")}:
        try:
            return metadata.version(spelling)
        except metadata.PackageNotFoundError:
            continue
    return None


def missing(folder: Path) -> list[Path]:
    return [wheel for wheel in sorted(folder.glob("*.whl")) if installed(distribution(wheel)) != version(wheel)]


if __name__ == "__main__":
    folder = Path(sys.argv[1] if len(sys.argv) > 1 else ".whl")
    print("\n".join(str(wheel) for wheel in missing(folder)))
