"""A validated run config -> a OneTrainer config (`__version` 11, concepts and samples inline).

The result starts from OneTrainer's complete defaults (all 13 part objects, as OneTrainer writes
them), and each section of ours is written over it. Our settings OneTrainer has no place for are
listed, as the importer lists OneTrainer's: every key of our config that no exporter read and that
differs from our default.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from onetrainer.util.config.onetrainer_json.defaults import train_defaults
from onetrainer.util.config.onetrainer_json.export_data import export_data
from onetrainer.util.config.onetrainer_json.export_memory import export_memory
from onetrainer.util.config.onetrainer_json.export_model import (
    export_embeddings,
    export_lora,
    export_model,
    export_options,
    export_parts,
)
from onetrainer.util.config.onetrainer_json.export_output import export_logging, export_sampling, export_saving
from onetrainer.util.config.onetrainer_json.export_training import (
    export_loss,
    export_noise,
    export_optimizer,
    export_schedule,
)
from onetrainer.util.config.onetrainer_json.findings import LACKING, Finding, Ledger, View, leftovers
from onetrainer.util.family import get_family

if TYPE_CHECKING:
    from onetrainer.util.config.schema import TrainConfig


def _our_defaults(config: TrainConfig) -> dict[str, Any]:
    """Our defaults for this family and method, to tell the settings a user changed from the rest."""
    from onetrainer.util.config.schema import TrainConfig
    from onetrainer.util.config.types import CHECK_PATHS

    minimal = {"model": {"type": config.model.type, "base": "org/model"}, "method": config.method.value}
    return TrainConfig.model_validate(minimal, context={CHECK_PATHS: False}).model_dump(mode="json")


def _item_defaults(config: TrainConfig) -> dict[str, dict[str, Any]]:
    from onetrainer.util.config.adapters import AdditionalEmbeddingConfig
    from onetrainer.util.config.data import ConceptConfig
    from onetrainer.util.config.output import SamplePrompt
    from onetrainer.util.config.types import CHECK_PATHS

    context = {CHECK_PATHS: False}
    return {
        "concepts": ConceptConfig.model_validate({"path": "x"}, context=context).model_dump(mode="json"),
        "prompts": SamplePrompt.model_validate({"prompt": "x"}).model_dump(mode="json"),
        "additional": AdditionalEmbeddingConfig.model_validate({"placeholder": "x"}).model_dump(mode="json"),
    }


def export_onetrainer(config: TrainConfig) -> tuple[dict[str, Any], list[Finding]]:
    """The OneTrainer config for `config`, and each of our settings it cannot hold."""
    spec = get_family(config.model.type)
    ledger = Ledger()
    items = _item_defaults(config)
    ours = View(config.model_dump(mode="json"), _our_defaults(config), ledger)
    ours.skip("preset")
    ot = train_defaults()
    export_model(ours, ot, spec)
    export_options(ours, ot, spec)
    export_parts(ours, ot, spec)
    export_lora(ours, ot, spec)
    export_embeddings(ours, ot)
    export_data(ours, ot, items["concepts"], spec)
    training = ours.child("training")
    export_optimizer(training, ot)
    export_memory(ours, ot, spec)
    export_schedule(training, ot)
    export_noise(ours, ot, spec)
    export_loss(ours, ot)
    export_sampling(ours, ot, config.data.resolution, spec.objective)
    export_saving(ours, ot, spec)
    export_logging(ours, ot)
    for item in ours.child("data").items("concepts", items["concepts"]):
        leftovers(item, {}, {}, LACKING)
    for item in ours.child("sampling").items("prompts", items["prompts"]):
        leftovers(item, {}, {}, LACKING)
    for item in ours.child("embedding").items("additional", items["additional"]):
        leftovers(item, {}, {}, LACKING)
    ours.child("data").skip("concepts")
    ours.child("sampling").skip("prompts")
    ours.child("embedding").skip("additional")
    leftovers(ours, {}, {}, LACKING)
    return _infinities_as_text(ot), ledger.unsupported


def _infinities_as_text(value: Any) -> Any:
    """`value` with every infinite float written as OneTrainer writes it, "inf" or "-inf": JSON has no infinity
    (Python would write `Infinity`, which strict readers refuse), and OneTrainer reads those strings back."""
    if isinstance(value, float) and math.isinf(value):
        return "inf" if value > 0 else "-inf"
    if isinstance(value, dict):
        return {key: _infinities_as_text(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_infinities_as_text(item) for item in value]
    return value
