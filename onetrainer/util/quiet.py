"""Importing the optional GPU libraries without their import-time notes.

torchao and bitsandbytes log, when imported, which optional native kernels they could not load: not
errors for what onetrainer does with them (weight-only storage, 8-bit optimizers). Here, below the
model and the config checks, so that both can import them quietly.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

NOISY_LOGGERS = ("torchao", "bitsandbytes", "torch.utils._pytree")
"""Loggers that, when the libraries are imported, report optional native kernels they could not load
(and torch's deprecation notes on torchao's types): not errors for weight-only storage."""


@contextlib.contextmanager
def quiet_import() -> Iterator[None]:
    """Silence the libraries' import-time notes about optional kernels (not errors for weight-only storage)."""
    loggers = [logging.getLogger(name) for name in NOISY_LOGGERS]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)
