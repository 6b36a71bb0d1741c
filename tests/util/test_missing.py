"""The messages for a path or a hub model the user named that is not there."""

from __future__ import annotations

from pathlib import Path

import pytest

from onetrainer.util.missing import ModelUnavailable, missing_path, model_unavailable


def _offline(monkeypatch: pytest.MonkeyPatch, value: bool) -> None:
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", value)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1" if value else "0")


def test_offline_says_how_to_download_or_go_online(monkeypatch: pytest.MonkeyPatch) -> None:
    _offline(monkeypatch, True)
    error = model_unavailable("org/name", where="model.base", what="base model")
    assert isinstance(error, ModelUnavailable)
    assert error.exit_code == 2
    assert error.message.startswith("the base model 'org/name' is not on this machine")
    assert "HF_HUB_OFFLINE is set" in error.message
    assert error.where == "model.base"
    assert "`hf download org/name`" in (error.hint or "")
    assert "unset HF_HUB_OFFLINE" in (error.hint or "")


def test_online_names_what_the_hub_said(monkeypatch: pytest.MonkeyPatch) -> None:
    _offline(monkeypatch, False)
    error = model_unavailable("org/name", where="--model", what="tagger", reason="connection refused")
    assert "the hub could not be reached (connection refused)" in error.message
    assert "`hf download org/name`" in (error.hint or "")
    assert "HF_HUB_OFFLINE=1 keeps onetrainer offline" in (error.hint or "")


def test_a_missing_relative_path_says_where_it_was_looked_for(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    error = missing_path("models/x.safetensors", what="LoRA file", where="--lora", also="Or a hub id.")
    assert error.message == "LoRA file not found: models/x.safetensors"
    assert error.where == "--lora"
    assert str(tmp_path / "models" / "x.safetensors") in (error.hint or "")
    assert (error.hint or "").endswith("Or a hub id.")
