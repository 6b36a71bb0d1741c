"""`onetrainer inspect` through the CLI: text and `--json` output for each kind, and exit codes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from typer.testing import CliRunner

from onetrainer.commands.app import app
from onetrainer.trainer.backup import write_backup

runner = CliRunner()


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("inspect-cli")
    module = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k"
    save_file(
        {
            f"{module}.lora_down.weight": torch.zeros(4, 768),
            f"{module}.lora_up.weight": torch.zeros(320, 4),
            f"{module}.alpha": torch.tensor(4.0),
        },
        root / "lora.safetensors",
        metadata={"ss_network_dim": "4"},
    )
    save_file({"emb_params": torch.zeros(2, 1024)}, root / "embedding.safetensors")
    (root / "run.yaml").write_text(f"model:\n  base: tiny:sd15\nmethod: full\ndata:\n  concepts:\n    - path: {root}\n")
    (root / "bad.yaml").write_text("model:\n  base: tiny:sd15\n  kind: sd15\n")
    backup = write_backup(
        root / "ws" / "backups",
        step=3,
        epoch=0,
        weights={"w": torch.zeros(2, 2)},
        state={},
        config_yaml="method: lora\n",
    )
    (root / "ws" / "config.yaml").write_text("method: lora\n")
    (root / "corrupt.safetensors").write_bytes(b"\xff" * 64)
    (root / "empty-folder").mkdir()
    return {"root": root, "backup": backup}


@pytest.mark.parametrize(
    ("name", "kind", "fmt", "model_type"),
    [
        ("lora.safetensors", "lora", "kohya", "sd15"),
        ("embedding.safetensors", "embedding", "a1111", "sd2"),
        ("run.yaml", "config", "yaml", "sd15"),
        ("bad.yaml", "config", "yaml", None),
    ],
)
def test_json_has_kind_format_and_model_type(
    files: dict[str, Path], name: str, kind: str, fmt: str, model_type: str | None
) -> None:
    result = runner.invoke(app, ["inspect", str(files["root"] / name), "--json"])

    assert result.exit_code == (2 if name == "bad.yaml" else 0), result.output
    data = json.loads(result.stdout)
    assert (data["kind"], data["format"], data["model_type"]) == (kind, fmt, model_type)


def test_text_views_render_for_every_kind(files: dict[str, Path], tiny_sd15_dir: Path, image_dataset_dir: Path) -> None:
    cases = {
        str(files["root"] / "lora.safetensors"): "kohya layout, rank 4",
        str(files["root"] / "embedding.safetensors"): "fits SD 2.x",
        str(files["root"] / "run.yaml"): "changed from defaults",
        str(files["root"] / "bad.yaml"): "INVALID",
        str(files["backup"]): "training backup at step 3",
        str(files["root"] / "ws"): "latest backup at step 3",
        str(tiny_sd15_dir): "diffusers folder",
        image_dataset_dir.as_posix(): "image folder: 8 images",
    }
    for path, expected in cases.items():
        result = runner.invoke(app, ["inspect", path])
        assert result.exit_code == (2 if path.endswith("bad.yaml") else 0), (path, result.output)
        assert expected in result.stdout, (path, result.stdout)


def test_image_folder_json_includes_the_dataset_report(image_dataset_dir: Path) -> None:
    result = runner.invoke(app, ["inspect", str(image_dataset_dir), "--json", "--resolution", "64"])

    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert (data["kind"], data["resolution"]) == ("images", 64)
    assert data["concepts"][0]["found"] == 8
    assert data["buckets"]


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["{root}/corrupt.safetensors"], "Recognised"),
        (["{root}/empty-folder"], "does not recognise"),
        (["{root}/missing"], "file or folder not found"),
        (["{root}", "--model-type", "sd9"], "sd9"),
    ],
)
def test_unknown_or_broken_paths_exit_2(files: dict[str, Path], arguments: list[str], message: str) -> None:
    result = runner.invoke(app, ["inspect", *(argument.format(root=files["root"]) for argument in arguments)])

    assert result.exit_code == 2
    assert message in result.output


def _lying_embedding(root: Path) -> bytes:
    """100 bytes whose header claims a 1000x1000 float32 embedding (4 MB)."""
    raw = json.dumps({"emb_params": {"dtype": "F32", "shape": [1000, 1000], "data_offsets": [0, 4_000_000]}})
    return (len(raw).to_bytes(8, "little") + raw.encode()).ljust(100, b"\0")


def _truncated_lora(root: Path) -> bytes:
    return (root / "lora.safetensors").read_bytes()[:-100]


@pytest.mark.parametrize("content", [_lying_embedding, _truncated_lora], ids=["header-past-the-end", "truncated"])
def test_a_file_shorter_than_its_header_says_is_a_user_error(files: dict[str, Path], tmp_path: Path, content) -> None:
    path = tmp_path / "broken.safetensors"
    path.write_bytes(content(files["root"]))

    result = runner.invoke(app, ["inspect", str(path), "--json"])

    assert result.exit_code == 2, result.output
    assert "truncated" in result.output
    assert "Unexpected error" not in result.output


def test_json_for_models_backups_and_workspaces(files: dict[str, Path], tiny_sd15_dir: Path) -> None:
    def inspect_json(path: Path) -> dict:
        result = runner.invoke(app, ["inspect", str(path), "--json"])
        assert result.exit_code == 0, result.output
        return json.loads(result.stdout)

    model = inspect_json(tiny_sd15_dir)
    assert (model["kind"], model["format"], model["model_type"]) == ("model", "diffusers", "sd15")
    backup = inspect_json(files["backup"])
    assert (backup["kind"], backup["format"], backup["step"], backup["epoch"]) == (
        "backup",
        "onetrainer-backup-v1",
        3,
        0,
    )
    workspace = inspect_json(files["root"] / "ws")
    assert (workspace["kind"], workspace["format"]) == ("workspace", "onetrainer-workspace")
    assert "step 3" in workspace["summary"]


def _dry_run_report(config: Path) -> dict:
    result = runner.invoke(app, ["train", str(config), "--dry-run", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout.splitlines()[-1])
    del report["event"]
    return report


def _folder_report(*arguments: str) -> dict:
    result = runner.invoke(app, ["inspect", *arguments, "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    return {key: data[key] for key in data if key not in ("kind", "format", "model_type", "path", "summary")}


def test_image_folder_with_a_config_reports_what_dry_run_does(tmp_path: Path, image_dataset_dir: Path) -> None:
    config = tmp_path / "run.yaml"
    config.write_text(
        "model:\n  base: tiny:sd15\ndata:\n  resolution: 96\n  concepts:\n"
        f"    - path: {image_dataset_dir}\n      repeats: 3\ntraining:\n  batch_size: 4\n"
        f"workspace: {tmp_path / 'ws'}\n"
    )
    expected = _dry_run_report(config)
    assert expected.pop("memory")["peak_bytes"] > 0  # the memory estimate is the dry run's alone

    report = _folder_report(str(image_dataset_dir), "--config", str(config))

    assert report.pop("resolution") == 96
    assert report == expected
    assert (report["batch_size"], report["concepts"][0]["samples_per_epoch"]) == (4, 24)


def test_image_folder_takes_resolution_and_batch_size(image_dataset_dir: Path) -> None:
    small = _folder_report(str(image_dataset_dir), "--resolution", "64", "--batch-size", "1")
    batched = _folder_report(str(image_dataset_dir), "--resolution", "64", "--batch-size", "4")
    assert (small["batch_size"], batched["batch_size"]) == (1, 4)
    assert batched["steps_per_epoch"] < small["steps_per_epoch"] == 8
    overridden = _folder_report(str(image_dataset_dir), "--resolution", "128")
    assert overridden["resolution"] == 128
