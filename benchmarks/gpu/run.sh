#!/usr/bin/env bash
# The GPU benchmark as one command on a CUDA machine with no network:
#   benchmarks/gpu/run.sh OUT_DIR [--budget SECONDS] [--steps N] [--dry-run | --cpu-real-size]
# or the test suite's `gpu`-marked tests (the CUDA-only paths), a few minutes:
#   benchmarks/gpu/run.sh --tests [PYTEST ARGS]     (e.g. --junitxml=$OUT/tests.xml)
# A speed run and a memory run write the same report names: give each its own OUT_DIR.
# Installs the wheels in .whl/ whose distribution this Python lacks (see benchmarks/README.md for
# preparing them) into a scratch folder, then runs `python -m benchmarks.gpu` (or pytest) from the checkout.
set -euo pipefail
cd "$(dirname "$0")/../.."

PYTHON=${PYTHON:-python3}
SITE=${BENCHMARK_SITE:-/tmp/onetrainer-benchmark-site}
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

if [ -d .whl ]; then
    mapfile -t missing < <("$PYTHON" -m benchmarks.gpu.wheels .whl)
    if [ "${#missing[@]}" -gt 0 ] && [ -n "${missing[0]}" ]; then
        echo "installing from .whl: ${missing[*]##*/}" >&2
        "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$SITE" "${missing[@]}"
    fi
    export PYTHONPATH="$PWD:$SITE${PYTHONPATH#"$PWD"}"  # the carried versions before any the image puts there
fi
lacking=$("$PYTHON" -c 'import importlib.util as u; print(*[m for m in ("diffusers", "pydantic", "peft", "typer") if u.find_spec(m) is None])')
if [ -n "$lacking" ]; then
    echo "error: this Python lacks $lacking and .whl/ holds no wheel of it;" \
        "prepare .whl/ (benchmarks/gpu/prepare_wheels.sh) and carry it to this machine" >&2
    exit 2
fi

if [ "${1:-}" = "--tests" ]; then
    shift
    mapfile -t files < <(grep -rl "pytest.mark.gpu" tests)  # only the modules with GPU tests are imported
    exec "$PYTHON" -m pytest -q -m gpu -p no:cacheprovider "${files[@]}" "$@"
fi
exec "$PYTHON" -m benchmarks.gpu "$@"
