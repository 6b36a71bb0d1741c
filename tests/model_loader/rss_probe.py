"""Run in a subprocess by `test_streaming.py`: write a model with a few hundred MB of linears, or load it and
report how much resident memory loading took at its peak.

`python rss_probe.py write FOLDER` saves a tiny SD 1.5 pipeline whose UNet has wide, deep attention
blocks (about 200 M parameters, most in linear layers) in fp32, as a diffusers folder and as the
original single file `FOLDER.safetensors`. `python rss_probe.py load SOURCE FORMAT` loads either
through the registered loader, the UNet stored as FORMAT (or plain fp32 for "none"), and prints
one JSON line: the peak resident memory loading added (`VmHWM` after `clear_refs`, in bytes) and the
UNet's fp32 size.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def _write(folder: Path) -> None:
    import torch
    from diffusers import UNet2DConditionModel

    from onetrainer.util.tiny.models import save_tiny_model

    save_tiny_model("sd15", folder)
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=8,
        block_out_channels=(512, 512),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        transformer_layers_per_block=4,
        cross_attention_dim=32,
        attention_head_dim=8,
        norm_num_groups=32,
    )
    unet.save_pretrained(folder / "unet")

    from onetrainer.model_loader.pipeline import load_model
    from onetrainer.model_saver.diffusion import DiffusionSaver
    from onetrainer.util.enums import TrainingMethod

    single_file = folder.with_suffix(".safetensors")
    DiffusionSaver().save(load_model(folder), single_file, method=TrainingMethod.FULL, dtype=None)


def _status(key: str) -> int:
    text = Path("/proc/self/status").read_text(encoding="utf-8")
    line = next(line for line in text.splitlines() if line.startswith(f"{key}:"))
    return int(line.split()[1]) * 1024


def _load(source: Path, storage: str) -> None:
    import torch

    from onetrainer.model.quantised import QuantisedStorage, require_library, storage_bytes
    from onetrainer.util.config.model import ModelConfig
    from onetrainer.util.registry import ModuleKind, lookup

    loader = lookup(ModuleKind.LOADER, "sd15")()
    architecture = {"config": str(source.with_suffix(""))} if source.is_file() else {}
    config = ModelConfig(type="sd15", base=str(source), **architecture)
    quantise = {} if storage == "none" else {"unet": QuantisedStorage(storage, torch.bfloat16)}
    if storage != "none":
        require_library(storage)
    loader.load(ModelConfig(type="sd15", base="tiny:sd15"), quantise=quantise)  # imports and first-use caches
    Path("/proc/self/clear_refs").write_text("5", encoding="utf-8")
    before = _status("VmRSS")
    model = loader.load(config, quantise=quantise)
    peak = _status("VmHWM") - before
    unet = model.components["unet"]
    modules = [module for module in unet.modules() if isinstance(module, torch.nn.Linear)]
    linears = {id(module.weight) for module in modules}
    values = sum(module.in_features * module.out_features for module in modules)
    values += sum(param.numel() for param in unet.parameters() if id(param) not in linears)
    stored = sum(storage_bytes(param) for param in unet.parameters())
    largest = max(module.in_features * module.out_features for module in modules)
    print(json.dumps({"peak": peak, "fp32": 4 * values, "stored": stored, "largest_fp32": 4 * largest}))


if __name__ == "__main__":
    command, folder = sys.argv[1], Path(sys.argv[2])
    if command == "write":
        _write(folder)
    else:
        _load(folder, sys.argv[3])
