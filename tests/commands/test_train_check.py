"""`onetrainer train CONFIG --check`: validate, print the resolved config, exit 0 or 2."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from onetrainer.commands.app import app
from onetrainer.util import family
from onetrainer.util.config.checks import TRAINS
from onetrainer.util.config.presets import preset_names, presets_dir
from onetrainer.util.registry import supporting
from onetrainer.util.tiny.dataset import write_png_claiming_size

runner = CliRunner()


def check(*args):
    return runner.invoke(app, ["train", *map(str, args), "--check"], terminal_width=200)


def test_preset_file_with_concept_override_prints_resolved_config(tmp_path):
    result = check(presets_dir() / "sd15-lora.yaml", f"data.concepts.0.path={tmp_path}", "training.epochs=3")
    assert result.exit_code == 0, result.output
    resolved = yaml.safe_load(result.output)
    assert resolved["data"]["concepts"][0]["path"] == str(tmp_path)
    assert resolved["training"]["epochs"] == 3
    assert resolved["model"]["type"] == "sd15"


@pytest.mark.parametrize(
    ("content", "overrides", "expected"),
    [
        ("model: [oops\n", [], "invalid YAML"),
        ("training:\n  learning_rte: 1\n", [], "did you mean 'training.learning_rate'"),
        ("training:\n  batch_size: many\n", [], "valid integer"),
        ("training:\n  batch_size: 0\n", [], "greater than or equal to 1"),
        ("preset: sd15-lroa\n", [], "did you mean 'sd15-lora'"),
        ("", ["foo"], "KEY=VALUE"),
        ("", ["training.nope=1"], "unknown key"),
        ("", ["data.concepts.9.path=/tmp"], "out of range"),
        ("", ["training.optimizer_args={foo: 1}"], "training.optimizer_args.foo = 1: the adamw optimizer has no such"),
        (
            "",
            ["training.optimizer_args={amsgrad: abc}"],
            "training.optimizer_args.amsgrad = 'abc': the adamw optimizer takes true",
        ),
        (
            "",
            ["training.optimizer=prodigy", "training.optimizer_args={lr: 1.0}"],
            "training.optimizer_args.lr = 1.0: the prodigy optimizer takes this from",
        ),
    ],
)
def test_bad_input_exits_2_with_a_clear_message(tmp_path, content, overrides, expected):
    concepts = tmp_path / "images"
    concepts.mkdir()
    config = tmp_path / "run.yaml"
    config.write_text(content)
    base = [] if content.startswith("preset") else ["model.base=org/model", f"data.concepts.0.path={concepts}"]
    if "[oops" in content:
        base = []
    result = check(config, *base, *overrides)
    assert result.exit_code == 2, result.output
    assert expected in result.output
    assert "Traceback" not in result.output


def test_missing_config_file_exits_2(tmp_path):
    result = check(tmp_path / "missing.yaml")
    assert result.exit_code == 2
    assert "config file not found" in result.output


def test_missing_concept_folder_names_the_key_and_says_what_to_set(tmp_path):
    result = check(presets_dir() / "sd15-lora.yaml", f"data.concepts.0.path={tmp_path / 'missing'}")
    assert result.exit_code == 2
    said = " ".join(result.output.replace("│", " ").split())
    assert "data.concepts.0.path" in said
    assert "does not exist" in said
    assert "Set data.concepts.0.path to a folder of your images" in said
    assert "onetrainer presets" not in said


@pytest.mark.parametrize("name", preset_names())
def test_every_shipped_preset_passes_check_as_shipped(name, monkeypatch):
    monkeypatch.chdir(presets_dir().parent)
    result = check(presets_dir() / f"{name}.yaml")
    assert result.exit_code == 0, result.output
    assert yaml.safe_load(result.output)["model"]["base"]


@pytest.fixture
def untrainable_family(register_unet_test_family):
    """A family whose spec is registered but which has no training setup yet, as a family being added is."""
    return register_unet_test_family("unbuilt", "Unbuilt", bucket_step=8, default_resolution=512)


@pytest.mark.parametrize("mode", ["--check", "--dry-run"])
def test_an_unregistered_model_type_exits_2_naming_the_registered_ones(tmp_path, mode):
    """No family is named `zeta` (a made-up architecture): its configs are refused before anything loads."""
    args = ["train", presets_dir() / "sd15-lora.yaml", "model.type=zeta", f"data.concepts.0.path={tmp_path}", mode]
    result = runner.invoke(app, list(map(str, args)), terminal_width=200)
    assert result.exit_code == 2, result.output
    said = " ".join(result.output.replace("│", " ").split())
    assert "model.type" in said
    assert "unknown model type" in said
    assert f"valid: {', '.join(family.family_names())}" in said


@pytest.mark.parametrize("mode", ["--check", "--dry-run"])
def test_a_model_type_without_a_training_setup_exits_2(tmp_path, mode, untrainable_family):
    args = ["train", presets_dir() / "sd15-lora.yaml", "model.type=unbuilt", f"data.concepts.0.path={tmp_path}", mode]
    result = runner.invoke(app, list(map(str, args)), terminal_width=200)
    assert result.exit_code == 2, result.output
    said = " ".join(result.output.replace("│", " ").split())
    assert "Unbuilt models cannot be trained in this version (it has no loader, setup, sampler, saver for them)" in said
    assert f"model types that train: {', '.join(supporting(TRAINS))}" in said
    assert "unbuilt" not in supporting(TRAINS)


@pytest.mark.parametrize("mode", ["--check", "--dry-run"])
def test_a_lora_given_as_the_base_model_exits_2_before_the_data_scan(tmp_path, mode):
    """Told from the file's header, before the memory estimate a dry run would make from the shipped config."""
    from safetensors.numpy import save_file

    lora = tmp_path / "lora.safetensors"
    save_file({"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": np.zeros((2, 2), "f4")}, str(lora))
    args = ["train", presets_dir() / "sd15-lora.yaml", f"model.base={lora}", f"data.concepts.0.path={tmp_path}", mode]
    result = runner.invoke(app, list(map(str, args)), terminal_width=200)
    assert result.exit_code == 2, result.output
    said = " ".join(result.output.replace("│", " ").split())
    assert "model.base = '" in said
    assert "this is a LoRA, not a base model" in said
    assert "Traceback" not in said
    assert "memory" not in said


def test_a_preset_without_a_dataset_says_what_to_set_at_dry_run(tmp_path):
    args = ["train", presets_dir() / "sd15-lora.yaml", f"workspace={tmp_path / 'ws'}", "--dry-run"]
    result = runner.invoke(app, list(map(str, args)), terminal_width=200)
    assert result.exit_code == 2, result.output
    said = " ".join(result.output.replace("│", " ").split())
    assert "no concepts are configured" in said
    assert "data.concepts.0.path=~/datasets/my-cat" in said


def _all_excluded(tmp_path, *flags):
    images = tmp_path / "images"
    images.mkdir()
    (images / "empty.png").write_bytes(b"")
    (images / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    args = [
        "train",
        presets_dir() / "demo.yaml",
        f"data.concepts.0.path={images}",
        f"workspace={tmp_path / 'workspace'}",
        f"saving.output={tmp_path / 'out' / 'lora.safetensors'}",
        *flags,
    ]
    return runner.invoke(app, list(map(str, args)), terminal_width=200)


def _assert_nothing_trains(result, tmp_path):
    assert result.exit_code == 2, result.output
    said = " ".join(result.output.replace("│", " ").split())
    assert "nothing would train" in said
    assert "1 image(s) skipped: empty file" in said
    assert "1 image(s) skipped: unreadable" in said
    assert "empty.png" in said
    assert not (tmp_path / "out").exists()


def test_training_where_every_file_is_excluded_exits_2_with_counted_reasons(tmp_path):
    _assert_nothing_trains(_all_excluded(tmp_path), tmp_path)


def test_dry_run_where_every_file_is_excluded_exits_2_with_counted_reasons(tmp_path):
    _assert_nothing_trains(_all_excluded(tmp_path, "--dry-run"), tmp_path)


@pytest.fixture(scope="module")
def process_settings():
    """Training sets Pillow's pixel limit and torch's thread count for the process: restore both."""
    import torch
    from PIL import Image

    limit, threads = Image.MAX_IMAGE_PIXELS, torch.get_num_threads()
    yield
    Image.MAX_IMAGE_PIXELS = limit
    torch.set_num_threads(threads)


def _with_giant(root, dataset):
    images = Path(shutil.copytree(dataset, root / "images"))
    write_png_claiming_size(images / "giant.png", 15000, 15000)
    return images


@pytest.mark.usefixtures("process_settings")
def test_dry_run_skips_a_decompression_bomb_and_names_it(tmp_path, shapes_dataset_dir):
    images = _with_giant(tmp_path, shapes_dataset_dir)
    args = ["train", presets_dir() / "demo.yaml", f"data.concepts.0.path={images}", f"workspace={tmp_path}/ws"]
    result = runner.invoke(app, [*map(str, args), "--dry-run", "--json"], terminal_width=200)
    assert result.exit_code == 0, result.output
    report = json.loads(result.output.splitlines()[-1])
    (skipped,) = report["concepts"][0]["skipped"]
    assert skipped["path"] == str(images / "giant.png")
    assert skipped["reason"].startswith("too large: 225,000,000 pixels")
    assert report["concepts"][0]["used"] == 16


@pytest.fixture(scope="module")
def giant_run(tmp_path_factory, shapes_dataset_dir, process_settings):
    """One training step on the shapes plus a decompression bomb, with ONETRAINER_THREADS=1, as JSON lines."""
    root = tmp_path_factory.mktemp("giant-run")
    args = [
        "train",
        presets_dir() / "demo.yaml",
        f"data.concepts.0.path={_with_giant(root, shapes_dataset_dir)}",
        f"workspace={root / 'ws'}",
        f"saving.output={root / 'out.safetensors'}",
        "sampling.before_training=false",
        "sampling.every=never",
        "logging.tensorboard=false",
        "training.max_steps=1",
        "--json",
    ]
    result = runner.invoke(app, list(map(str, args)), env={"ONETRAINER_THREADS": "1"})
    assert result.exit_code == 0, result.output
    return root, [json.loads(line) for line in result.output.splitlines() if line.startswith("{")]


def test_training_skips_a_decompression_bomb_with_a_warning(giant_run):
    root, events = giant_run
    warnings = [event["message"] for event in events if event["event"] == "warning"]
    assert any(str(root / "images" / "giant.png") in message and "too large" in message for message in warnings)
    assert (root / "out.safetensors").is_file()


def test_training_uses_the_thread_count_from_the_environment(giant_run):
    import torch

    _, events = giant_run
    statuses = [event["message"] for event in events if event["event"] == "status"]
    assert "using 1 CPU thread (ONETRAINER_THREADS=1)" in statuses
    assert torch.get_num_threads() == 1


@pytest.mark.parametrize("mode", ["--check", "--dry-run", None])
def test_an_embedding_placeholder_in_no_caption_is_refused_before_anything_loads(tmp_path, shapes_dataset_dir, mode):
    args = [
        "train",
        presets_dir() / "demo.yaml",
        "method=embedding",
        "embedding.placeholder=<shape>",
        f"data.concepts.0.path={shapes_dataset_dir}",
        f"workspace={tmp_path / 'ws'}",
        f"saving.output={tmp_path / 'out.safetensors'}",
    ]
    result = runner.invoke(app, [*map(str, args), *([mode] if mode else [])], terminal_width=200)
    assert result.exit_code == 2, result.output
    said = " ".join(result.output.replace("│", " ").split())
    assert f"no caption of concept '{shapes_dataset_dir.name}' contains '<shape>'" in said
    assert "caption.prefix" in said
    assert not (tmp_path / "ws").exists()


def test_an_embedding_placeholder_put_in_by_a_prefix_passes_check(shapes_dataset_dir):
    args = [
        presets_dir() / "demo.yaml",
        "method=embedding",
        "embedding.placeholder=<shape>",
        f"data.concepts.0.path={shapes_dataset_dir}",
        "data.concepts.0.caption.prefix='<shape>, '",
    ]
    result = check(*args)
    assert result.exit_code == 0, result.output
    assert yaml.safe_load(result.output)["data"]["concepts"][0]["caption"]["prefix"] == "<shape>, "


def test_check_with_json_prints_one_json_object(monkeypatch):
    """`--json` promises JSON on stdout, also for `--check`."""
    import json

    monkeypatch.chdir(presets_dir().parent)
    result = check(presets_dir() / "sd15-lora.yaml", "--json")
    assert result.exit_code == 0, result.output
    (line,) = result.stdout.strip().splitlines()
    event = json.loads(line)
    assert event["event"] == "config"
    assert event["config"]["model"]["type"] == "sd15"
