"""The in-memory model: components and tokenizers by name, read and replaced like attributes."""

from __future__ import annotations

from onetrainer.model_loader.pipeline import load_model


def test_assigning_a_component_replaces_it_where_savers_and_samplers_look() -> None:
    model = load_model("tiny:sd15")
    replacement = load_model("tiny:sd2").vae
    model.vae = replacement
    model.tokenizer = "a tokenizer"
    assert model.components["vae"] is replacement
    assert model.tokenizers["tokenizer"] == "a tokenizer"
    assert "vae" not in vars(model)


def test_other_attributes_stay_attributes() -> None:
    model = load_model("tiny:sd15")
    model.prediction_type = "v_prediction"
    assert model.prediction_type == "v_prediction"
    assert set(model.components) == {"unet", "text_encoder", "vae"}
