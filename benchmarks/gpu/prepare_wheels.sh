#!/usr/bin/env bash
# Download, on a machine with PyPI access, the wheels the GPU machine may lack into .whl/ (git-ignored):
#   benchmarks/gpu/prepare_wheels.sh [PYTHON_VERSION [CUDA]]    (defaults 3.12 and 130: the GPU image's
#   Python and its torch's CUDA build, 2.11+cu130)
# The packages at the versions this checkout is tested with (torch excepted: the machine's own CUDA
# build is used): pure-Python ones, plus compiled ones whose wheels must match the GPU machine's Python
# and platform, torchao and bitsandbytes among them (the memory presets' quantised weights and 8-bit
# optimizer). run.sh installs each one whose distribution is missing there or at another version.
# huggingface-hub is not carried: the image's 1.33 meets diffusers and transformers, and the 2.x series
# imports httpx2, which the image lacks. regex is, as transformers checks its version when imported.
set -euo pipefail
cd "$(dirname "$0")/../.."

PY=${1:-3.12}
CUDA=${2:-130}
PIP=(python3 -m pip download --quiet --no-deps --dest .whl)
"${PIP[@]}" --only-binary=:all: \
    diffusers==0.42.1 transformers==5.24.0 peft==0.21.2 accelerate==1.15.0 \
    pydantic==2.14.4 annotated-types==0.8.0 typing-inspection==0.4.5 typing-extensions==4.16.0
"${PIP[@]}" --only-binary=:all: --python-version "$PY" --implementation cp \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux_2_24_x86_64 \
    --platform manylinux_2_28_x86_64 pydantic-core==2.50.5 tokenizers==0.23.3 safetensors==0.8.0 torchao==0.18.0 \
    bitsandbytes==0.50.2 regex==2026.11.19
# bitsandbytes ships a kernel library per CUDA and ROCm version (43 MB together), more than a device call
# may carry beside the others: keep the CPU one and those of the GPU image's CUDA major version.
python3 - "$CUDA" <<'PY'
import base64, hashlib, pathlib, re, sys, zipfile

major = sys.argv[1][:2]
for wheel in pathlib.Path(".whl").glob("bitsandbytes-*.whl"):
    unused = re.compile(rf"bitsandbytes/libbitsandbytes_(?!cpu|cuda{major}\d)\w+\.so$")
    slim = wheel.with_suffix(".slim")
    with zipfile.ZipFile(wheel) as source, zipfile.ZipFile(slim, "w", zipfile.ZIP_DEFLATED) as target:
        for item in source.infolist():
            if unused.match(item.filename):
                continue
            data = source.read(item)
            if item.filename.endswith(".dist-info/RECORD"):
                lines = data.decode().splitlines()
                data = ("\n".join(line for line in lines if not unused.match(line.split(",")[0])) + "\n").encode()
            target.writestr(item, data)
    slim.replace(wheel)
PY
ls -la .whl
