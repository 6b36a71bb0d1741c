import json
import os
import signal
import subprocess
import sys
from pathlib import Path

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
