"""A kohya LoRA adapting only some of an OpenCLIP attention's q, k, v and out layers is said to do nothing in
A1111, which applies it to its fused MultiheadAttention only when all four carry one."""

from __future__ import annotations

import copy
import functools
from pathlib import Path
from typing import Any

import torch
from typer.testing import CliRunner

from onetrainer.commands.app import app
from onetrainer.model.diffusion import DiffusionModel
from onetrainer.model_loader.pipeline import load_model
from onetrainer.model_saver.diffusion import DiffusionSaver
from onetrainer.model_setup.diffusion import DiffusionSetup
from onetrainer.util.config.loader import validate
from onetrainer.util.enums import TrainingMethod
from onetrainer.util.family import get_family, tiny_model
from onetrainer.util.registry import ModuleKind, lookup

QV_ONLY = r"self_attn\.(q_proj|v_proj)$"


@functools.cache
def _base(kind: str) -> DiffusionModel:
    return load_model(f"tiny:{kind}")


def _setup(kind: str, encoder: str, regex: str | None, fmt: str = "kohya") -> DiffusionSetup:
    family = tiny_model(kind)[0].name
    config = validate(
        {
            "model": {"type": family, "base": f"tiny:{kind}"},
            "parts": {encoder: {"train": True, "lora_regex": regex}},
            "saving": {"format": fmt},
        },
        check_paths=False,
    )
    setup = lookup(ModuleKind.SETUP, family)(copy.deepcopy(_base(kind)), config)
    setup.prepare("cpu", torch.float32)
    return setup


def test_the_warning_names_the_encoder_and_counts_its_partial_layers() -> None:
    spec = get_family("sdxl")
    layer = "text_encoder_2.text_model.encoder.layers.{}.self_attn.{}"
    partial = [layer.format(n, p) for n in range(3) for p in ("q_proj", "v_proj")]
    whole = [layer.format(3, p) for p in ("q_proj", "k_proj", "v_proj", "out_proj")]
    (message,) = spec.all_or_none_warnings([*partial, *whole, "unet.mid_block.attentions.0.proj_in"], "lora.regex")
    assert message.startswith("lora.regex: 3 attention layers of the OpenCLIP ViT-bigG text encoder adapt only some")
    assert "(e.g. text_model.encoder.layers.0: self_attn.q_proj, self_attn.v_proj)" in message
    assert spec.all_or_none_warnings(whole, "lora.regex") == []
    clip_l = [p.replace("text_encoder_2", "text_encoder") for p in partial]  # CLIP-L is not fused in A1111
    assert spec.all_or_none_warnings(clip_l, "lora.regex") == []


def test_training_sd2s_text_encoder_on_some_attention_layers_warns_before_training() -> None:
    (message,) = _setup("sd2", "text_encoder", QV_ONLY).interop_warnings()
    assert message.startswith("parts.text_encoder.lora_regex: ")
    assert "OpenCLIP ViT-H text encoder adapt only some of self_attn.q_proj" in message
    assert _setup("sd2", "text_encoder", None).interop_warnings() == []  # the attn preset adapts all four
    assert _setup("sd2", "text_encoder", QV_ONLY, fmt="peft").interop_warnings() == []  # A1111 reads no peft
    assert _setup("sd15", "text_encoder", QV_ONLY).interop_warnings() == []  # CLIP-L: separate layers there


def test_sdxls_second_encoder_warns_and_its_first_does_not() -> None:
    assert len(_setup("sdxl", "text_encoder_2", QV_ONLY).interop_warnings()) == 1
    assert _setup("sdxl", "text_encoder", QV_ONLY).interop_warnings() == []


def test_convert_to_kohya_warns_for_a_partly_adapted_attention(tmp_path: Path) -> None:
    setup = _setup("sd2", "text_encoder", QV_ONLY, fmt="peft")
    peft = DiffusionSaver().save(setup.model, tmp_path / "qv.safetensors", method=TrainingMethod.LORA, format="peft")[0]
    result = CliRunner().invoke(app, ["convert", str(peft), str(tmp_path / "kohya.safetensors"), "--to", "kohya"])
    assert result.exit_code == 0, result.output
    said: Any = " ".join(result.output.split())
    assert "--to kohya: " in said
    assert "A1111 applies such a layer's LoRA only when all of them are adapted" in said
