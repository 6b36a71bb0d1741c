"""PNG files that remember how they were made, and where a batch of them goes.

Two text chunks: `parameters` in A1111's layout (prompt, `Negative prompt:`, then `Key: value`
pairs), which image browsers and model sites parse, and `onetrainer`, the same facts as JSON for
tools. `sample` and training previews both write through `save_png`, so every image onetrainer draws
carries them. The file is written atomically like everything else.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from onetrainer.model_sampler.schedulers import DISPLAY_NAMES
from onetrainer.util.atomic import atomic_file
from onetrainer.util.errors import UserError

if TYPE_CHECKING:
    from PIL import Image


@dataclass
class GenerationInfo:
    prompt: str
    negative_prompt: str
    steps: int
    cfg: float
    seed: int
    width: int
    height: int
    scheduler: str
    model: str
    loras: list[tuple[str, float]] = field(default_factory=list)
    embeddings: list[str] = field(default_factory=list)
    training_step: int | None = None
    """Set on training previews: the optimizer step whose weights drew the image."""

    def a1111_parameters(self) -> str:
        pairs = [
            ("Steps", str(self.steps)),
            ("Sampler", DISPLAY_NAMES.get(self.scheduler, self.scheduler)),
            ("CFG scale", f"{self.cfg:g}"),
            ("Seed", str(self.seed)),
            ("Size", f"{self.width}x{self.height}"),
            ("Model", self.model),
        ]
        if self.loras:
            pairs.append(("LoRAs", '"' + ", ".join(f"{name}:{scale:g}" for name, scale in self.loras) + '"'))
        if self.embeddings:
            pairs.append(("Embeddings", '"' + ", ".join(self.embeddings) + '"'))
        if self.training_step is not None:
            pairs.append(("Training step", str(self.training_step)))
        lines = [self.prompt]
        if self.negative_prompt:
            lines.append(f"Negative prompt: {self.negative_prompt}")
        lines.append(", ".join(f"{key}: {value}" for key, value in pairs))
        return "\n".join(lines)

    def text_chunks(self) -> dict[str, str]:
        facts = {key: value for key, value in asdict(self).items() if value is not None}
        return {"parameters": self.a1111_parameters(), "onetrainer": json.dumps(facts, ensure_ascii=False)}


def save_png(image: Image.Image, path: str | os.PathLike[str], info: GenerationInfo) -> None:
    """Write `image` as a PNG carrying `info` in its text chunks."""
    from PIL.PngImagePlugin import PngInfo

    chunks = PngInfo()
    for key, value in info.text_chunks().items():
        chunks.add_text(key, value)
    with atomic_file(path) as handle:
        image.save(handle, format="PNG", pnginfo=chunks)


def output_paths(output: str | os.PathLike[str], seeds: list[int], *, overwrite: bool = False) -> list[Path]:
    """Where each image goes: `x.png` (one image) or `x-01.png`, ... ; in a folder, numbered files.

    A folder gets `00012-<seed>.png` names after its highest number, so it never overwrites;
    an explicit file that exists is refused unless `overwrite`.
    """
    target = Path(output).expanduser()
    if target.suffix:
        if target.suffix.lower() != ".png":
            raise UserError(f"images are written as PNG, not {target.suffix}", hint="Name a .png file or a folder.")
        if len(seeds) == 1:
            paths = [target]
        else:
            paths = [target.with_name(f"{target.stem}-{index + 1:02d}.png") for index in range(len(seeds))]
        existing = [path for path in paths if path.exists()]
        if existing and not overwrite:
            raise UserError(f"output exists: {existing[0]}", hint="Pass --overwrite, or choose another --output.")
        return paths
    if target.exists() and not target.is_dir():
        raise UserError(f"output exists and is not a folder: {target}")
    numbers = [int(p.name.split("-", 1)[0]) for p in target.glob("*.png") if p.name.split("-", 1)[0].isdigit()]
    start = max(numbers, default=-1) + 1
    return [target / f"{start + index:05d}-{seed}.png" for index, seed in enumerate(seeds)]
