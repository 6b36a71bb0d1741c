"""Seeding and capturing every global random-number generator, for reproducible runs and exact resume.

A backup must continue the run bit-exactly, so it holds the state of each generator a training step
can touch: Python's `random`, NumPy's legacy global generator, torch's CPU generator and every CUDA
device's. The captured state contains only tensors, ints, tuples and strings, so it round-trips
through `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator
from typing import Any


def seed_everything(seed: int) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def capture_rng_state() -> dict[str, Any]:
    import numpy as np
    import torch

    kind, keys, position, has_gauss, cached_gaussian = np.random.get_state(legacy=True)
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {
            "kind": str(kind),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "position": int(position),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached_gaussian),
        },
    }
    state.update(capture_torch_rng_state())
    return state


def capture_torch_rng_state() -> dict[str, Any]:
    """Only torch's generators (CPU and CUDA): a few microseconds, cheap enough to take every step.

    Python's and NumPy's generators cost a hundred times more to capture, and nothing inside a
    training step draws from them (the data loader's randomness is keyed, not global).
    """
    import torch

    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Put every generator back where `capture_rng_state` found it.

    CUDA states are restored only when this process has as many devices as the one that captured
    them; otherwise (a CPU resume of a GPU run) the CUDA streams simply start fresh.
    """
    import numpy as np
    import torch

    python_state = state["python"]
    random.setstate((python_state[0], tuple(python_state[1]), python_state[2]))
    numpy_state = state["numpy"]
    np.random.set_state(
        (
            numpy_state["kind"],
            numpy_state["keys"].numpy().astype(np.uint32),
            numpy_state["position"],
            numpy_state["has_gauss"],
            numpy_state["cached_gaussian"],
        )
    )
    torch.set_rng_state(state["torch"])
    cuda_states = state.get("cuda")
    if cuda_states and torch.cuda.is_available() and torch.cuda.device_count() == len(cuda_states):
        torch.cuda.set_rng_state_all(cuda_states)


@contextlib.contextmanager
def preserved_rng() -> Iterator[None]:
    """Run a side activity (previews, validation) without moving the training run's random streams.

    Otherwise drawing a preview every few minutes would change the following training steps, and a
    run's result would depend on wall-clock time.
    """
    state = capture_rng_state()
    try:
        yield
    finally:
        restore_rng_state(state)
