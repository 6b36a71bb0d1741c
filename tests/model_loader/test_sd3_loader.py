"""Loading SD 3.x single files: ComfyUI's checkpoints with a part in its scaled fp8 format."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from onetrainer.model_loader.pipeline import load_model
from onetrainer.util.enums import TrainingMethod
from onetrainer.util.registry import ModuleKind, lookup

T5 = "text_encoders.t5xxl."


def _same(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    theirs = b.state_dict()
    return all(torch.equal(tensor, theirs[key]) for key, tensor in a.state_dict().items())


def test_a_t5_in_comfyuis_scaled_fp8_format_comes_from_the_config(tmp_path: Path) -> None:
    """As ComfyUI's `sd3.5_medium_incl_clips_t5xxlfp8scaled.safetensors`: its T5 weights mean nothing without
    their per-layer scales, so T5 is read as if the file lacked it; the rest comes from the file."""
    changed = load_model("tiny:sd35-medium")
    with torch.no_grad():
        for name in ("transformer", "text_encoder_3"):
            for param in changed.components[name].parameters():
                param.add_(0.25)
    saver = lookup(ModuleKind.SAVER, "sd35-medium")()
    tensors = load_file(saver.save(changed, tmp_path / "full.safetensors", method=TrainingMethod.FULL, dtype="fp32")[0])
    tensors[T5 + "transformer.scaled_fp8"] = torch.empty(0, dtype=torch.float8_e4m3fn)
    for key in [k for k in tensors if k.startswith(T5) and k.endswith("SelfAttention.q.weight")]:
        tensors[key.removesuffix("weight") + "scale_weight"] = torch.tensor(0.5)
    path = tmp_path / "sd35m-incl-clips-t5xxlfp8scaled.safetensors"
    save_file(tensors, path)
    model = load_model(path, config="tiny:sd35-medium")
    assert _same(model.text_encoder_3, load_model("tiny:sd35-medium").text_encoder_3), "T5 from model.config"
    assert _same(model.transformer, changed.transformer), "the MMDiT from the file"
