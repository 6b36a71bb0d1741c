"""The GPU training-step benchmark: see `__main__.py` and benchmarks/README.md."""
