#!/usr/bin/env bash
# Download, on a machine with PyPI access, the wheels the GPU machine may lack into .whl/ (git-ignored):
#   benchmarks/gpu/prepare_wheels.sh [PYTHON_VERSION]    (default 3.12, the GPU image's Python)
# Pure-Python packages at the versions this checkout is tested with, plus pydantic-core, torchao and
# bitsandbytes (the memory presets' quantised weights and 8-bit optimizer), which are compiled: their
# wheels must match the GPU machine's Python and platform. run.sh installs only those whose
# distribution is missing there.
set -euo pipefail
cd "$(dirname "$0")/../.."

PY=${1:-3.12}
PIP=(python3 -m pip download --quiet --no-deps --dest .whl)
"${PIP[@]}" --only-binary=:all: \
    diffusers==0.42.1 pydantic==2.14.4 annotated-types==0.8.0 typing-inspection==0.4.5 \
    importlib-metadata
"${PIP[@]}" --only-binary=:all: --python-version "$PY" --implementation cp \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux_2_24_x86_64 \
    --platform manylinux_2_28_x86_64 pydantic-core==2.50.5 torchao==0.18.0 bitsandbytes==0.50.2
ls -la .whl
