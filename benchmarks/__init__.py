"""Benchmarks: ratios of our code against the reference it replaces, measured the same way every time.

`python -m benchmarks [--quick] [--out FILE.json]` runs the CPU suite (see README.md here);
`benchmarks/gpu/run.sh OUT_DIR` runs the GPU training-step suite on a CUDA machine. Nothing here is a
test: the benchmarks assert nothing about time, and the smoke test only checks that they still run.
"""
