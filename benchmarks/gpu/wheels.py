"""Which carried wheels name a distribution this Python lacks: `python -m benchmarks.gpu.wheels .whl`.

The GPU machine has no network and its own set of packages (torch, transformers, peft, ...). A wheel
carried in `.whl/` is installed only if its distribution is missing there, so the machine's own builds
of compiled packages are kept and only what is absent is added. Prints the paths, one a line.
"""

from __future__ import annotations

import sys
from importlib import metadata
from pathlib import Path


def distribution(wheel: Path) -> str:
    """The distribution a wheel file installs (the name before the first dash, PEP 427)."""
    return wheel.name.split("-", 1)[0]


def installed(name: str) -> bool:
    for spelling in {name, name.replace("_", "-"), name.replace("-", "_")}:
        try:
            metadata.version(spelling)
        except metadata.PackageNotFoundError:
            continue
        return True
    return False


def missing(folder: Path) -> list[Path]:
    return [wheel for wheel in sorted(folder.glob("*.whl")) if not installed(distribution(wheel))]


if __name__ == "__main__":
    folder = Path(sys.argv[1] if len(sys.argv) > 1 else ".whl")
    print("\n".join(str(wheel) for wheel in missing(folder)))
