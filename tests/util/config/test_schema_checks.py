"""Values the schema refuses up front, with their key paths: what used to fail late or not at all."""

import sys

import pytest

from onetrainer.util.config.loader import load_config
from onetrainer.util.enums import SAMPLING_SCHEDULERS
from onetrainer.util.errors import ConfigError


@pytest.fixture
def run(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("model:\n  base: org/model\n")
    return path


def problems(path, *overrides):
    with pytest.raises(ConfigError) as info:
        load_config(path, list(overrides))
    return {problem.path: problem.message for problem in info.value.problems}


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("training.learning_rate=nan", "training.learning_rate"),
        ("training.learning_rate=.inf", "training.learning_rate"),
        ("parts.unet.learning_rate=.nan", "parts.unet.learning_rate"),
        ("parts.text_encoder={learning_rate: .inf}", "parts.text_encoder.learning_rate"),
        ("training.optimizer_args={d_coef: .nan}", "training.optimizer_args.d_coef"),
        ("training.optimizer_args={betas: [0.9, .inf]}", "training.optimizer_args.betas"),
        ("training.betas=[0.9, .nan]", "training.betas.1"),
        ("noise.timesteps.mean=-.inf", "noise.timesteps.mean"),
        ("loss.gamma=.nan", "loss.gamma"),
    ],
)
def test_non_finite_numbers_are_refused_as_such(run, override, key):
    found = problems(run, override)
    assert list(found) == [key]
    assert found[key] == "must be a finite number, not nan or infinity"


def test_preview_size_must_be_a_multiple_of_eight(run):
    found = problems(run, "sampling.prompts.0={prompt: a cat, width: 63, height: 64}")
    assert list(found) == ["sampling.prompts.0.width"]
    assert "multiple of 8" in found["sampling.prompts.0.width"]
    assert "56 or 64" in found["sampling.prompts.0.width"]


def test_preview_without_size_takes_the_resolution_which_must_fit_too(run):
    found = problems(run, "data.resolution=500", "sampling.prompts.0={prompt: a cat, width: 512}")
    assert list(found) == ["sampling.prompts.0.height"]
    assert "data.resolution (500)" in found["sampling.prompts.0.height"]
    assert load_config(run, ["data.resolution=500", "sampling.prompts.0={prompt: a, width: 496, height: 504}"])


def test_unknown_preview_scheduler_is_refused_with_a_suggestion(run):
    found = problems(run, "sampling.prompts.0={prompt: a cat, scheduler: eulr}")
    message = found["sampling.prompts.0.scheduler"]
    assert "did you mean 'euler'" in message
    assert "dpm++2m-karras" in message


def test_scheduler_names_are_normalised(run):
    config = load_config(run, ["sampling.prompts.0={prompt: a cat, scheduler: ' DPM++2M-Karras '}"])
    assert config.sampling.prompts[0].scheduler == "dpm++2m-karras"


def test_schema_knows_exactly_the_samplers_schedulers():
    from onetrainer.model_sampler.schedulers import SCHEDULERS
    from onetrainer.util.enums import SCHEDULERS_BY_OBJECTIVE

    assert {objective.value: tuple(names) for objective, names in SCHEDULERS.items()} == SCHEDULERS_BY_OBJECTIVE
    assert set(SAMPLING_SCHEDULERS) == {name for names in SCHEDULERS.values() for name in names}


@pytest.mark.parametrize(("value", "expected"), [("auto", "auto"), ("AUTO", "auto"), (3, 3), ("2", 2)])
def test_thread_setting_accepts_auto_or_a_count(run, value, expected):
    assert load_config(run, [f"training.threads={value}"]).training.threads == expected


@pytest.mark.parametrize("value", [0, -1, "many", "true", 1.5])
def test_thread_setting_refuses_anything_else(run, value):
    assert "auto or a whole number" in problems(run, f"training.threads={value}")["training.threads"]


@pytest.mark.parametrize(
    ("override", "key", "message"),
    [
        (
            "{amsgrd: true}",
            "amsgrd",
            "the adamw optimizer has no such argument; did you mean 'amsgrad'? its arguments: lr,",
        ),
        ("{d_coef: abc}", "d_coef", "the prodigy optimizer takes a number here (its default: 1.0)"),
        ("{amsgrad: 1}", "amsgrad", "the adamw optimizer takes true or false here (its default: false)"),
        (
            "{eps: [1e-30]}",
            "eps",
            "the adafactor optimizer takes a list of 2 numbers here (its default: [1e-30, 0.001])",
        ),
        ("{fused: 'yes'}", "fused", "the adamw optimizer takes true, false or null here (its default: null)"),
    ],
)
def test_optimizer_args_are_checked_against_the_optimizers_signature(run, override, key, message):
    """These passed `--check` and failed only once the model had loaded and the cache had filled."""
    optimizer = message.split()[1]
    found = problems(run, f"training.optimizer={optimizer}", f"training.optimizer_args={override}")
    assert list(found) == [f"training.optimizer_args.{key}"]
    assert found[f"training.optimizer_args.{key}"].startswith(message)


def test_optimizer_args_of_the_right_kinds_pass(run):
    args = "{fused: null, foreach: false, amsgrad: true, maximize: false}"
    assert load_config(run, [f"training.optimizer_args={args}"]).training.optimizer_args["amsgrad"] is True
    sgd = load_config(run, ["training.optimizer=sgd", "training.optimizer_args={nesterov: true, dampening: 0.1}"])
    assert sgd.training.optimizer_args == {"nesterov": True, "dampening": 0.1}


@pytest.mark.parametrize(
    ("optimizer", "key", "value", "instead"),
    [
        ("prodigy", "lr", 1.0, "training.learning_rate"),
        ("adamw", "lr", 0.01, "training.learning_rate"),
        ("adamw", "weight_decay", 0.5, "training.weight_decay"),
        ("adamw", "betas", [0.8, 0.9], "training.betas"),
        ("adamw", "eps", 1e-6, "training.eps"),
        ("sgd", "momentum", 0.9, "training.momentum"),
        ("schedulefree_adamw", "warmup_steps", 7, "training.warmup"),
    ],
)
def test_optimizer_args_that_a_training_key_sets_are_refused_naming_the_key(run, optimizer, key, value, instead):
    """`lr` here was ignored (every parameter group carries its own rate); the others silently overrode their key."""
    found = problems(run, f"training.optimizer={optimizer}", f"training.optimizer_args={{{key}: {value}}}")
    assert list(found) == [f"training.optimizer_args.{key}"]
    assert f"takes this from {instead}, not from here: set {instead} instead" in found[f"training.optimizer_args.{key}"]


def test_the_epsilon_pair_of_adafactor_and_came_is_an_optimizer_argument(run):
    """`training.eps` is one number, which these two do not take."""
    config = load_config(run, ["training.optimizer=adafactor", "training.optimizer_args={eps: [1e-30, 0.01]}"])
    assert config.training.optimizer_args == {"eps": [1e-30, 0.01]}


@pytest.mark.parametrize("key", ["relative_step", "warmup_init"])
def test_adafactor_computing_its_own_learning_rate_is_refused(run, key):
    """transformers' Adafactor refuses the learning rate every parameter group carries beside it: no run could start."""
    found = problems(run, "training.optimizer=adafactor", f"training.optimizer_args={{{key}: true}}")
    assert list(found) == [f"training.optimizer_args.{key}"]
    assert "compute its own learning rate" in found[f"training.optimizer_args.{key}"]
    args = f"{{{key}: false, scale_parameter: true}}"
    assert load_config(run, ["training.optimizer=adafactor", f"training.optimizer_args={args}"]).training.optimizer_args


def test_optimizer_args_of_an_optimizer_not_installed_are_left_to_the_trainer(run, monkeypatch):
    """The names cannot be read without the package; the trainer names the install command instead."""
    monkeypatch.setitem(sys.modules, "lion_pytorch", None)
    config = load_config(run, ["training.optimizer=lion", "training.optimizer_args={whatever: 1}"])
    assert config.training.optimizer_args == {"whatever": 1}
    found = problems(run, "training.optimizer=adamw", "training.optimizer_args={whatever: 1}")
    assert list(found) == ["training.optimizer_args.whatever"]


@pytest.mark.parametrize(
    ("override", "key", "value", "message"),
    [
        ("data.resolution=64,abc", "data.resolution", "'64,abc'", "expected a whole number or a list of whole numbers"),
        (
            "data.resolution=[64, x]",
            "data.resolution",
            "[64, 'x']",
            "expected a whole number or a list of whole numbers",
        ),
        ("data.concepts.0.resolution=x", "data.concepts.0.resolution", "'x'", "expected a whole number or a list of"),
        ("parts.unet.offload_blocks=x", "parts.unet.offload_blocks", "'x'", "expected a number"),
        ("training.optimizer_args={d_coef: {a: 1}}", "training.optimizer_args.d_coef", "{'a': 1}", "expected true or"),
    ],
)
def test_a_value_of_none_of_a_unions_types_is_one_problem_at_its_key(run, tmp_path, override, key, value, message):
    """pydantic reports each member type at a path of its own (`data.resolution.int`, `data.resolution.list[int]`),
    which no config has."""
    with pytest.raises(ConfigError) as info:
        load_config(run, [f"data.concepts.0.path={tmp_path}", override])
    (problem,) = info.value.problems
    assert str(problem).startswith(f"{key} = {value}: {message}")


def test_optimizer_numbers_yaml_reads_as_text_are_numbers() -> None:
    """PyYAML reads `1e-6` (no dot) as a string; the optimizer gets the number, an int stays an int."""
    from onetrainer.util.config.loader import load_config

    overrides = [
        "model.base=org/m",
        "training.optimizer=prodigy",
        "training.optimizer_args={d0: 1e-6, slice_p: '11'}",
    ]
    config = load_config(None, overrides)
    assert config.training.optimizer_args == {"d0": 1e-6, "slice_p": 11}
    assert isinstance(config.training.optimizer_args["slice_p"], int)
    adafactor = ["model.base=org/m", "training.optimizer=adafactor", "training.optimizer_args={eps: [1e-30, 1e-2]}"]
    assert load_config(None, adafactor).training.optimizer_args == {"eps": [1e-30, 0.01]}
