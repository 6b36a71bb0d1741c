import pytest
import yaml

from onetrainer.util.config.loader import dump_config, load_config, validate
from onetrainer.util.config.types import CadenceUnit
from onetrainer.util.errors import ConfigError, UserError


def write(path, text):
    path.write_text(text)
    return path


@pytest.fixture
def concept_dir(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    return folder


def base_config(tmp_path, concept_dir, extra=""):
    return write(
        tmp_path / "run.yaml",
        f"model:\n  base: org/model\ndata:\n  concepts:\n    - path: {concept_dir}\n{extra}",
    )


def problems_of(excinfo):
    return {p.path: p.message for p in excinfo.value.problems}


def test_precedence_defaults_preset_file_overrides(tmp_path, concept_dir):
    path = base_config(tmp_path, concept_dir, "preset: sd15-lora\ntraining:\n  batch_size: 3\n")
    config = load_config(path, ["training.epochs=7"])
    assert config.preset == "sd15-lora"
    assert config.training.learning_rate == pytest.approx(1e-4)  # from the preset
    assert config.lora.rank == 16  # from the preset
    assert config.training.batch_size == 3  # file beats preset
    assert config.training.epochs == 7  # override beats everything
    assert config.training.max_grad_norm == 1.0  # schema default
    assert config.model.base == "org/model"


def test_override_with_list_index_and_yaml_scalar(tmp_path, concept_dir):
    other = tmp_path / "other"
    other.mkdir()
    config = load_config(
        base_config(tmp_path, concept_dir),
        [f"data.concepts.0.path={other}", "data.concepts.0.repeats=2.5", "training.max_steps=null"],
    )
    assert config.data.concepts[0].path == other
    assert config.data.concepts[0].repeats == 2.5
    assert config.training.max_steps is None


def test_override_can_append_a_list_item(tmp_path, concept_dir):
    config = load_config(base_config(tmp_path, concept_dir), [f"data.concepts.1.path={concept_dir}"])
    assert len(config.data.concepts) == 2


def test_override_expands_home(tmp_path, concept_dir, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    config = load_config(base_config(tmp_path, concept_dir), ["data.concepts.0.path=~/images"])
    assert config.data.concepts[0].path == concept_dir


def test_dump_round_trips(tmp_path, concept_dir):
    config = load_config(base_config(tmp_path, concept_dir), ["preset=sd15-lora", "sampling.every=250 steps"])
    text = dump_config(config)
    assert validate(yaml.safe_load(text)) == config
    assert config.sampling.every.unit is CadenceUnit.STEP
    assert "every: 250 steps" in text


def test_missing_file(tmp_path):
    with pytest.raises(UserError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")


def test_invalid_yaml_reports_line_and_column(tmp_path):
    path = write(tmp_path / "bad.yaml", "model:\n  base: org/model\ndata: [unclosed\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.where.startswith(f"{path}:")
    line, column = info.value.where.rsplit(":", 2)[-2:]
    assert int(line) >= 3
    assert int(column) >= 1
    assert "invalid YAML" in info.value.message


def test_unknown_key_suggests_the_real_one(tmp_path, concept_dir):
    path = base_config(tmp_path, concept_dir, "training:\n  learning_rte: 1.0e-4\n  bach_size: 2\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    problems = problems_of(info)
    assert "did you mean 'training.learning_rate'" in problems["training.learning_rte"]
    assert "did you mean 'training.batch_size'" in problems["training.bach_size"]


def test_every_problem_is_reported_in_one_pass(tmp_path, concept_dir):
    path = base_config(tmp_path, concept_dir, "training:\n  batch_size: zero\n  epochs: 0\nmethod: dreambooth\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, ["data.concepts.0.path=/does/not/exist", "bogus.key=1", "foo"])
    problems = problems_of(info)
    assert "valid integer" in problems["training.batch_size"]
    assert "greater than or equal to 1" in problems["training.epochs"]
    assert "'lora', 'full' or 'embedding'" in problems["method"]
    assert "path does not exist" in problems["data.concepts.0.path"]
    assert "unknown key" in problems["bogus"]
    assert "KEY=VALUE" in problems["foo"]


def test_wrong_type_and_out_of_range_carry_the_value(tmp_path, concept_dir):
    with pytest.raises(ConfigError) as info:
        load_config(base_config(tmp_path, concept_dir), ["training.learning_rate=-1", "lora.rank=abc"])
    text = str(info.value)
    assert "training.learning_rate = -1" in text
    assert "lora.rank = 'abc'" in text


def test_bad_list_index_and_path_into_a_scalar(tmp_path, concept_dir):
    with pytest.raises(ConfigError) as info:
        load_config(
            base_config(tmp_path, concept_dir),
            ["data.concepts.5.path=/tmp", "data.concepts.x.path=/tmp", "training.seed.value=1"],
        )
    problems = problems_of(info)
    assert "out of range" in problems["data.concepts.5"]
    assert "not a list index" in problems["data.concepts.x"]
    assert "no sub-keys" in problems["training.seed.value"]


def test_unknown_preset_lists_valid_ones(tmp_path, concept_dir):
    with pytest.raises(ConfigError) as info:
        load_config(base_config(tmp_path, concept_dir, "preset: sd15-lroa\n"))
    message = problems_of(info)["preset"]
    assert "did you mean 'sd15-lora'" in message
    assert "sd15-full" in message


def test_model_base_is_required_and_hub_ids_are_accepted(tmp_path, concept_dir):
    path = write(tmp_path / "run.yaml", f"data:\n  concepts:\n    - path: {concept_dir}\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert "required" in problems_of(info)["model.base"]
    assert load_config(path, ["model.base=stabilityai/sdxl-turbo"]).model.base == "stabilityai/sdxl-turbo"
    with pytest.raises(ConfigError) as info:
        load_config(path, ["model.base=./missing.safetensors"])
    assert "no such file" in problems_of(info)["model.base"]


def test_top_level_must_be_a_mapping(tmp_path):
    with pytest.raises(ConfigError, match="mapping"):
        load_config(write(tmp_path / "list.yaml", "- a\n- b\n"))
