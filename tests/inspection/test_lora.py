"""`inspect` on LoRA files: hand-written kohya and LyCORIS, diffusers' saver, our own kohya output."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from onetrainer.inspection.dispatch import inspect_path

SD15_MODULES = (
    ("lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q", 320, 320),
    ("lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k", 768, 320),
    ("lora_unet_up_blocks_1_attentions_0_proj_in", 640, 640),
    ("lora_te_text_model_encoder_layers_0_self_attn_q_proj", 768, 768),
)


def _kohya_file(path: Path, ranks: dict[str, int], alphas: dict[str, float], metadata: dict[str, str]) -> Path:
    tensors: dict[str, torch.Tensor] = {}
    for module, width_in, width_out in SD15_MODULES:
        rank = ranks.get(module, 4)
        tensors[f"{module}.lora_down.weight"] = torch.zeros(rank, width_in, dtype=torch.float16)
        tensors[f"{module}.lora_up.weight"] = torch.zeros(width_out, rank, dtype=torch.float16)
        tensors[f"{module}.alpha"] = torch.tensor(alphas.get(module, 2.0), dtype=torch.float16)
    save_file(tensors, path, metadata=metadata)
    return path


def test_hand_written_kohya_lora(tmp_path: Path) -> None:
    te_module = SD15_MODULES[3][0]
    path = _kohya_file(
        tmp_path / "style.safetensors",
        ranks={te_module: 8},
        alphas={te_module: 1.5},
        metadata={"ss_network_dim": "4", "ss_tag_frequency": '{"cats": {"cat": 3}}'},
    )

    result = inspect_path(path)

    assert (result.kind, result.format, result.model_type) == ("lora", "kohya", "sd15")
    details = result.details
    assert (details["rank"], details["ranks"]) == (4, {"4": 3, "8": 1})
    assert (details["alpha"], details["alphas"]) == (2, {"2": 3, "1.5": 1})
    assert details["components"] == {"text_encoder": 1, "unet": 3}
    assert details["targets"] == {"attn1_to_q": 1, "attn2_to_k": 1, "proj_in": 1, "self_attn_q_proj": 1}
    assert details["modules"] == 4
    assert details["metadata"]["kohya"]["ss_tag_frequency"] == {"cats": {"cat": 3}}
    assert "rank 4 (3), 8 (1)" in result.summary


def test_kohya_lora_without_alphas_says_so(tmp_path: Path) -> None:
    path = _kohya_file(tmp_path / "a.safetensors", {}, {}, {})
    stripped = {
        k: v for k, v in __import__("safetensors.torch").torch.load_file(path).items() if not k.endswith("alpha")
    }
    save_file(stripped, path)

    details = inspect_path(path).details

    assert details["alpha"] is None
    assert "alpha = rank" in details["alpha_source"]


def test_lycoris_loha_and_dora(tmp_path: Path) -> None:
    module = SD15_MODULES[1][0]
    loha = {
        f"{module}.hada_w1_a": torch.zeros(320, 6),
        f"{module}.hada_w1_b": torch.zeros(6, 768),
        f"{module}.hada_w2_a": torch.zeros(320, 6),
        f"{module}.hada_w2_b": torch.zeros(6, 768),
        f"{module}.alpha": torch.tensor(3.0),
    }
    save_file(loha, tmp_path / "loha.safetensors")
    dora = {
        f"{module}.lora_down.weight": torch.zeros(2, 768),
        f"{module}.lora_up.weight": torch.zeros(320, 2),
        f"{module}.dora_scale": torch.ones(320, 1),
        f"{module}.alpha": torch.tensor(1.0, dtype=torch.bfloat16),  # bfloat16 scalars need torch to read
    }
    save_file(dora, tmp_path / "dora.safetensors")

    loha_result = inspect_path(tmp_path / "loha.safetensors")
    dora_result = inspect_path(tmp_path / "dora.safetensors")

    assert (loha_result.format, loha_result.details["adapter"], loha_result.details["rank"]) == (
        "lycoris-loha",
        "loha",
        6,
    )
    assert loha_result.details["alpha"] == 3
    assert (dora_result.format, dora_result.details["adapter"], dora_result.details["alpha"]) == ("kohya", "dora", 1)


def test_lora_from_diffusers_saver(diffusers_lora_dir: Path) -> None:
    result = inspect_path(diffusers_lora_dir)

    assert (result.kind, result.format) == ("lora", "peft")
    assert result.path == diffusers_lora_dir / "pytorch_lora_weights.safetensors"
    details = result.details
    assert details["rank"] == 4
    assert details["components"] == {"unet": details["modules"]}
    assert set(details["targets"]) == {
        "attn1_to_q",
        "attn1_to_k",
        "attn1_to_v",
        "attn2_to_q",
        "attn2_to_k",
        "attn2_to_v",
    }
    assert all(name.startswith("unet.") for name in details["module_names"])


def test_legacy_diffusers_key_names(diffusers_lora_dir: Path, tmp_path: Path) -> None:
    renamed = {
        key.replace(".lora_A.weight", ".lora.down.weight").replace(".lora_B.weight", ".lora.up.weight"): value
        for key, value in load_file(diffusers_lora_dir / "pytorch_lora_weights.safetensors").items()
    }
    save_file(renamed, tmp_path / "legacy.safetensors")

    result = inspect_path(tmp_path / "legacy.safetensors")

    assert (result.format, result.details["rank"]) == ("diffusers-legacy", 4)
    assert result.details["modules"] == inspect_path(diffusers_lora_dir).details["modules"]


def test_our_kohya_output_carries_our_metadata(our_kohya_lora: Path, diffusers_lora_dir: Path) -> None:
    result = inspect_path(our_kohya_lora)
    source = inspect_path(diffusers_lora_dir)

    assert (result.kind, result.format) == ("lora", "kohya")
    assert (result.details["modules"], result.details["rank"]) == (source.details["modules"], 4)
    assert result.details["alpha"] == 4
    # The tiny model's widths cannot tell SD 1.x from 2.x, so the saver writes no architecture keys.
    assert result.model_type is None
    assert set(result.details["metadata"]) == {"onetrainer"}


def test_comfy_layout_reads_its_alpha_tensors(tmp_path: Path) -> None:
    module = "diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k"
    tensors = {
        f"{module}.lora_A.weight": torch.zeros(16, 768),
        f"{module}.lora_B.weight": torch.zeros(320, 16),
        f"{module}.alpha": torch.tensor(8.0),
    }
    save_file(tensors, tmp_path / "comfy.safetensors")

    result = inspect_path(tmp_path / "comfy.safetensors")

    assert (result.format, result.details["rank"], result.details["alpha"]) == ("comfy", 16, 8)
    assert result.details["components"] == {"diffusion_model": 1}
    assert result.details["targets"] == {"attn2_to_k": 1}
