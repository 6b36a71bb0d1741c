"""The launcher of `onetrainer train --gpus N`: torchrun's command line and the signals it passes on."""

from __future__ import annotations

import argparse

import pytest

from onetrainer.trainer.launch import SHUTDOWN_TIMEOUT_S, torchrun_arguments


def _torchrun_parser_without_shutdown_timeout() -> argparse.ArgumentParser:
    """torchrun's parser as older torch versions have it, as far as the launcher's question goes."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--nproc-per-node")
    parser.add_argument("training_script")
    parser.add_argument("training_script_args", nargs=argparse.REMAINDER)
    return parser


def test_torchrun_gets_the_shutdown_timeout_where_it_knows_the_option() -> None:
    arguments = torchrun_arguments(2, ["run.yaml"], port=29500)
    assert f"--shutdown-timeout={SHUTDOWN_TIMEOUT_S}" in arguments
    assert arguments[-4:] == ["-m", "onetrainer", "train", "run.yaml"]


def test_an_older_torchrun_without_the_option_is_not_given_it(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch.distributed.run

    monkeypatch.setattr(torch.distributed.run, "get_args_parser", _torchrun_parser_without_shutdown_timeout)
    arguments = torchrun_arguments(2, ["run.yaml"], port=29500)
    assert not any(argument.startswith("--shutdown-timeout") for argument in arguments)
    assert arguments[-4:] == ["-m", "onetrainer", "train", "run.yaml"]
