"""Files of every kind `inspect` describes: written by onetrainer itself and by other tools.

Built once per session from the tiny SD 1.5 model; tests only read them.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from onetrainer.commands.app import app


def _convert(*arguments: str) -> None:
    result = CliRunner().invoke(app, ["convert", *arguments])
    assert result.exit_code == 0, result.output


@pytest.fixture(scope="session")
def inspect_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("inspect")


@pytest.fixture(scope="session")
def single_file(inspect_dir: Path, tiny_sd15_dir: Path) -> Path:
    """Our own single-file checkpoint of the tiny SD 1.5 model (`onetrainer convert`)."""
    target = inspect_dir / "tiny-sd15.safetensors"
    _convert(str(tiny_sd15_dir), str(target))
    return target


@pytest.fixture(scope="session")
def diffusers_lora_dir(inspect_dir: Path, tiny_sd15_dir: Path) -> Path:
    """A LoRA written by diffusers' own saver (`save_lora_weights`), rank 4 on the attention projections."""
    import torch
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    unet = UNet2DConditionModel.from_pretrained(tiny_sd15_dir, subfolder="unet")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        unet.add_adapter(
            LoraConfig(r=4, lora_alpha=4, init_lora_weights="gaussian", target_modules=["to_q", "to_k", "to_v"])
        )
    target = inspect_dir / "diffusers-lora"
    StableDiffusionPipeline.save_lora_weights(target, unet_lora_layers=get_peft_model_state_dict(unet))
    return target


@pytest.fixture(scope="session")
def our_kohya_lora(inspect_dir: Path, diffusers_lora_dir: Path) -> Path:
    """The diffusers LoRA rewritten by `onetrainer convert` in the kohya layout (with our metadata)."""
    target = inspect_dir / "ours-kohya.safetensors"
    _convert(str(diffusers_lora_dir / "pytorch_lora_weights.safetensors"), str(target), "--to", "kohya")
    return target
