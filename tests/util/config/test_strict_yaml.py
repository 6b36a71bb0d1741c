"""Config files are read strictly: a repeated key or a byte that is not UTF-8 is an error with its line."""

import pytest

from onetrainer.util.config.loader import load_config
from onetrainer.util.config.yaml_text import DuplicateKeysError, load_yaml
from onetrainer.util.errors import ConfigError


def problems_of(excinfo):
    return {p.path: p.message for p in excinfo.value.problems}


def test_a_second_block_of_the_same_section_is_refused_with_both_lines(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(
        "model:\n  base: org/model\n"  # lines 1-2
        "sampling:\n  every: 10 steps\n"  # lines 3-4
        "training:\n  seed: 1\n"  # lines 5-6
        "sampling:\n  every: 20 steps\n"  # lines 7-8
    )
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.exit_code == 2
    assert "lines 3 and 7" in problems_of(info)["sampling"]
    assert info.value.where == f"{path}:7"


def test_repeated_keys_inside_lists_are_named_by_their_full_path(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("model:\n  base: org/model\ndata:\n  concepts:\n    - path: a\n      repeats: 2\n      path: b\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert "lines 5 and 7" in problems_of(info)["data.concepts.0.path"]


def test_keys_that_are_the_same_value_are_duplicates():
    with pytest.raises(DuplicateKeysError) as info:
        load_yaml("flags:\n  true: 1\n  yes: 2\n")
    (duplicate,) = info.value.duplicates
    assert (duplicate.path, duplicate.first_line, duplicate.second_line) == ("flags.yes", 2, 3)


def test_merge_keys_and_aliases_are_not_duplicates():
    data = load_yaml("base: &b\n  seed: 1\n  batch: 2\nrun:\n  <<: *b\n  seed: 3\nagain: *b\n")
    assert data["run"] == {"seed": 3, "batch": 2}
    assert data["again"] == {"seed": 1, "batch": 2}


def test_a_repeated_key_in_an_override_value_is_refused(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("model:\n  base: org/model\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, ["training.learning_rates={unet: 1e-4, unet: 1e-5}"])
    assert "given twice" in problems_of(info)["training.learning_rates"]


def test_invalid_utf8_is_refused_with_its_byte_offset_and_line(tmp_path):
    path = tmp_path / "run.yaml"
    raw = b"model:\n  base: org/model\nsampling:\n  prompts:\n    - prompt: caf\xe9 au lait\n"
    path.write_bytes(raw)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    offset = raw.index(b"\xe9")
    message = info.value.message
    assert f"byte offset {offset}" in message
    assert "0xe9" in message
    assert "line 5, column 18" in message
    assert info.value.where == f"{path}:5:18"


def test_a_byte_order_mark_is_not_an_error(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_bytes("\ufeffmodel:\n  base: org/model\n".encode())
    assert load_config(path).model.base == "org/model"
