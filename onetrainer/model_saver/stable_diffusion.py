"""SD 1.x / 2.x save through the shared saver: their layouts are all in their family spec."""

from __future__ import annotations

from onetrainer.model_saver.diffusion import DiffusionSaver
from onetrainer.util.registry import ModuleKind, register

register(ModuleKind.SAVER, "sd15", "sd2")(DiffusionSaver)
