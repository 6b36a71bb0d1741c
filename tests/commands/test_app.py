import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from onetrainer import __version__
from onetrainer.commands.app import app

runner = CliRunner()
HEAVY = ("torch", "diffusers", "transformers", "peft")


def test_help_lists_the_commands():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("train", "presets"):
        assert command in result.output


def test_every_command_has_help():
    commands = list(app.registered_commands)
    assert commands
    for command in commands:
        sub = runner.invoke(app, [command.name, "--help"])
        assert sub.exit_code == 0, command.name
        assert "Usage" in sub.output


def test_version():
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.output.strip() == f"onetrainer {__version__}"


def test_help_does_not_import_heavy_packages():
    """`onetrainer --help` must stay instant: no ML framework may be imported to render it."""
    code = (
        "import sys, json\n"
        "from onetrainer.commands.app import app\n"
        "try:\n"
        "    app(['--help'], prog_name='onetrainer')\n"
        "except SystemExit:\n"
        "    pass\n"
        f"print(json.dumps([m for m in {list(HEAVY)!r} if m in sys.modules]))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(result.stdout.strip().splitlines()[-1]) == []


def _library_notes(*options: str) -> tuple[list[str], str]:
    """The levels of the quieted loggers after a command ran, and what importing the libraries printed."""
    code = (
        "import json, logging\n"
        "from onetrainer.commands.app import app\n"
        "try:\n"
        f"    app([*{list(options)!r}, 'presets'], prog_name='onetrainer')\n"
        "except SystemExit:\n"
        "    pass\n"
        "import diffusers.quantizers, transformers.quantizers.auto, torchao, bitsandbytes\n"
        "names = ('torchao', 'bitsandbytes.backends.cpu.ops', 'torch.utils._pytree')\n"
        "print(json.dumps([logging.getLevelName(logging.getLogger(n).getEffectiveLevel()) for n in names]))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1]), result.stderr


def test_quantisation_libraries_print_no_import_notes_unless_debugging():
    """diffusers and transformers import torchao and bitsandbytes whenever they are installed, and those
    log the native kernels they could not load: without quieting, every run of a `[quant]` install
    (quantised or not) would start with lines of them."""
    pytest.importorskip("torchao")
    pytest.importorskip("bitsandbytes")
    levels, printed = _library_notes()
    assert levels == ["ERROR", "ERROR", "ERROR"]
    assert "Failed to load" not in printed
    assert "register_constant" not in printed
    debug_levels, _ = _library_notes("--debug")
    assert "ERROR" not in debug_levels


def test_python_dash_m_runs_the_cli_with_exit_codes(tmp_path):
    ok = subprocess.run([sys.executable, "-m", "onetrainer", "--version"], capture_output=True, text=True)
    assert ok.returncode == 0
    assert __version__ in ok.stdout
    bad = subprocess.run(
        [sys.executable, "-m", "onetrainer", "train", str(tmp_path / "missing.yaml"), "--check"],
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2
    assert "config file not found" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_debug_shows_the_traceback(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "onetrainer", "--debug", "train", str(tmp_path / "missing.yaml"), "--check"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert "Traceback" in result.stderr


def test_unknown_command_is_a_usage_error():
    result = runner.invoke(app, ["trian"])
    assert result.exit_code == 2


def _help(*command: str) -> str:
    result = runner.invoke(app, [*command, "--help"], terminal_width=200)
    assert result.exit_code == 0, result.output
    return result.output


def _click_command(name: str):
    import typer

    return typer.main.get_command(app).commands[name]


def test_help_shows_words_for_values_not_python_types():
    """Flags showed `<bool>`, repeatable options `<list[str]>`, and usage lines `{config}`."""
    pages = {"(top)": _help()} | {command.name: _help(command.name) for command in app.registered_commands}
    for name, page in pages.items():
        for python_type in ("<bool>", "<list[", "<str>", "<int", "<float", "<path>", "<Path>"):
            assert python_type not in page, (name, python_type)
        usage = next(line for line in page.splitlines() if "Usage:" in line)
        assert "{" not in usage, (name, usage)
    assert "Usage: onetrainer train [OPTIONS] CONFIG [KEY=VALUE...]" in pages["train"]
    assert "Usage: onetrainer caption [OPTIONS] DIR" in pages["caption"]
    assert "FILE[:SCALE]" in pages["sample"]


def test_every_command_ends_with_examples_that_parse():
    """Each example is parsed by the command itself, so an example cannot name a flag that is gone."""
    import shlex

    from onetrainer.commands.app import COMMANDS

    for name, module in COMMANDS.items():
        assert "Examples" in _help(name), name
        assert module.EXAMPLES, name
        for _description, line in module.EXAMPLES:
            words = shlex.split(line.partition(" > ")[0])
            assert words[:2] == ["onetrainer", name], line
            command = _click_command(name)
            command.make_context(name, words[2:])  # raises on an unknown option or a bad value


def test_device_and_dtype_are_one_declaration_with_one_vocabulary():
    declarations = {name: {param.name: param for param in _click_command(name).params} for name in COMMANDS_WITH_DTYPE}
    choices = {
        name: [getattr(choice, "value", choice) for choice in params["dtype"].type_descriptor.choices]
        for name, params in declarations.items()
    }
    assert all(found == ["auto", "fp32", "fp16", "bf16"] for found in choices.values()), choices
    devices = {name: params["device"].default for name, params in declarations.items() if "device" in params}
    assert devices == {"sample": "auto", "caption": "auto", "mask": "auto"}


COMMANDS_WITH_DTYPE = ("sample", "caption", "mask", "convert")


def test_model_type_accepts_only_the_families_the_command_can_run(tmp_path):
    """`inspect --model-type <family>` was accepted (and failed later) where sample and convert refused it.

    No family is named `zeta` (a made-up architecture), so each command refuses it as unknown and lists
    the model types it can run: those that registered the modules it needs."""
    from onetrainer.util.registry import ModuleKind, supporting

    needs = {
        "inspect": (ModuleKind.SETUP,),
        "sample": (ModuleKind.LOADER, ModuleKind.SAMPLER),
        "convert": (ModuleKind.LOADER, ModuleKind.SAVER),
    }
    for arguments in (
        ["inspect", str(tmp_path), "--model-type", "zeta"],
        ["sample", "tiny:sd15", "-p", "x", "--model-type", "zeta"],
        ["convert", "tiny:sd15", str(tmp_path / "o.safetensors"), "--model-type", "zeta"],
    ):
        result = runner.invoke(app, arguments, terminal_width=200)
        assert result.exit_code == 2, (arguments, result.output)
        said = " ".join(result.output.replace("│", " ").split())
        assert "unknown model type 'zeta'" in said, arguments
        usable = supporting(needs[arguments[0]])
        assert {"sd15", "sd2", "sdxl"} <= set(usable)
        assert f"This command supports: {', '.join(usable)}." in said, arguments


def test_sigterm_takes_the_ctrl_c_path_in_every_command(tmp_path):
    # `convert` is held right after its output's temporary file is flushed, then gets SIGTERM: before,
    # the process died on the spot (exit 143) and left that file behind.
    output = tmp_path / "model.safetensors"
    driver = Path(__file__).with_name("signal_driver.py")
    process = subprocess.Popen(
        [sys.executable, str(driver), "os:fsync", "--after", "--", "convert", "tiny:sd15", str(output)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"},
    )
    for line in process.stdout:
        if line.startswith('{"event": "held"'):
            assert [path.name for path in tmp_path.iterdir() if path.name.endswith(".tmp")]
            process.send_signal(signal.SIGTERM)
    process.wait(timeout=300)
    stderr = process.stderr.read()
    assert process.returncode == 130, stderr
    assert "Interrupted by SIGTERM." in stderr
    assert list(tmp_path.iterdir()) == []
