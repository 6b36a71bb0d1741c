"""A made-up family registered for one test: shared code must serve any family through its spec.

The family ("dit-test") has what the next families have and 1.x/2.x do not: a transformer denoiser,
two text encoders, flow matching, a 16-channel latent with 2x2 patches, and no v-prediction variant.
Registering it proves that detection, metadata and config validation read the spec, not a table.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from onetrainer.util.family import (
    Component,
    Evidence,
    FamilySpec,
    Objective,
    Recognisers,
    Role,
    Shapes,
)

FAKE_NAME = "dit-test"


def _recognise_lora(shapes: Shapes) -> Evidence | None:
    if any(key.startswith("transformer.") for key in shapes):
        return Evidence(FAKE_NAME, "transformer keys")
    return None


def _recognise_embedding(shapes: Shapes) -> Evidence | None:
    return Evidence(FAKE_NAME, "two encoders' vectors") if set(shapes) == {"te_a", "te_b"} else None


FAKE_SPEC = FamilySpec(
    name=FAKE_NAME,
    title="Test DiT",
    components=(
        Component("transformer", Role.DENOISER, "Transformer", trains_by_default=True),
        Component("text_encoder", Role.TEXT_ENCODER, "Encoder A", tokenizer="tokenizer", embedding_key="te_a"),
        Component("text_encoder_2", Role.TEXT_ENCODER, "Encoder B", tokenizer="tokenizer_2", embedding_key="te_b"),
        Component("vae", Role.VAE, "VAE"),
    ),
    objective=Objective.FLOW_MATCHING,
    latent_channels=16,
    bucket_step=16,
    patch_size=2,
    default_resolution=1024,
    methods=frozenset({"lora", "full"}),
    modelspec_architecture="test-dit-v1",
    kohya_base_model_version="test_dit",
    pipeline_classes=("TestDiTPipeline",),
    recognise=Recognisers(lora=_recognise_lora, embedding=_recognise_embedding),
)


@pytest.fixture
def fake_family(register_test_family: Callable[[FamilySpec], FamilySpec]) -> FamilySpec:
    """`FAKE_SPEC`, registered for the duration of one test."""
    return register_test_family(FAKE_SPEC)
