"""OneTrainer JSON config -> our run config (plain data), with every setting we cannot honour listed.

The steps: read the file; migrate it from its `__version` (a sparse preset is not migrated); overlay
it on OneTrainer's defaults; read the concepts and samples (inline, else the files it names); map
each section; then report every setting that no mapper read and that is not at its default.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from onetrainer.util.config.onetrainer_json.defaults import (
    embedding_defaults,
    overlay,
    overlay_concepts,
    overlay_samples,
    sample_defaults,
    train_defaults,
)
from onetrainer.util.config.onetrainer_json.files import find_list_file, read_config, read_list
from onetrainer.util.config.onetrainer_json.findings import Finding, Ledger, View, leftovers
from onetrainer.util.config.onetrainer_json.import_adapters import map_embeddings, map_lora
from onetrainer.util.config.onetrainer_json.import_data import concept_views, map_concepts, map_data
from onetrainer.util.config.onetrainer_json.import_memory import map_memory
from onetrainer.util.config.onetrainer_json.import_model import map_model, map_options, map_parts
from onetrainer.util.config.onetrainer_json.import_output import map_logging, map_sampling, map_saving, sample_views
from onetrainer.util.config.onetrainer_json.import_training import (
    map_ema,
    map_loss,
    map_noise,
    map_optimizer,
    map_precision,
    map_schedule,
    resolve_optimizer,
)
from onetrainer.util.config.onetrainer_json.migrations import migrate, migrate_concept
from onetrainer.util.config.onetrainer_json.tables import CURRENT_VERSION, TOP_LEVEL_REASONS
from onetrainer.util.config.onetrainer_json.target import Target


@dataclass
class Imported:
    """Our run config as plain data, and what could not be carried over."""

    data: dict[str, Any]
    source: Path
    version: int | None
    """The `__version` the file was migrated from; None for a sparse preset (read unmigrated)."""
    concepts_from: str
    samples_from: str
    unsupported: list[Finding] = field(default_factory=list)
    notes: list[Finding] = field(default_factory=list)

    def describe_source(self) -> str:
        if self.version is None:
            return "a sparse preset (no __version): OneTrainer's defaults fill the missing keys, unmigrated"
        if self.version < CURRENT_VERSION:
            return f"__version {self.version}, migrated to {CURRENT_VERSION}"
        if self.version > CURRENT_VERSION:
            return f"__version {self.version}, newer than this onetrainer knows: read as {CURRENT_VERSION}"
        return f"__version {self.version}"


def import_onetrainer(path: Path) -> Imported:
    """Read and convert the OneTrainer config at `path`; raises `UserError` for a model we cannot train."""
    raw, version = migrate(read_config(path))
    ledger = Ledger()
    if version is not None and version > CURRENT_VERSION:
        ledger.note(
            "__version",
            version,
            f"newer than the versions this onetrainer knows (up to {CURRENT_VERSION}): read as {CURRENT_VERSION}, "
            "so a setting added or changed since then may be misread or reported as unknown",
        )
    view = View(overlay(raw, ledger), train_defaults(), ledger)
    out = Target()
    spec, method = map_model(view, out)
    map_parts(view, out, spec, method)
    map_options(view, out, spec)
    map_lora(view, out, spec, method)
    map_embeddings(view, out, method)
    map_data(view, out, spec)
    concepts, concepts_from = _objects(view, path, "concepts", "concept_file_name", "concept file")
    if isinstance(concepts, list):
        concepts = [migrate_concept(item) for item in concepts]
    concept_list = overlay_concepts(concepts, "concepts.", ledger) or []
    concept_items = concept_views(view, concept_list, "concepts.")
    out.set("data.concepts", map_concepts(concept_items))
    optimizer = resolve_optimizer(raw, ledger)
    map_schedule(view, out, optimizer["optimizer"])
    map_optimizer(view, optimizer, out)
    map_precision(view, out)
    map_memory(view, optimizer, out, spec, method)
    ema = map_ema(view, out)
    map_noise(view, out, spec)
    map_loss(view, out, spec)
    samples, samples_from = _objects(view, path, "samples", "sample_definition_file_name", "sample file")
    # OneTrainer fills a sample file's samples with its model type's defaults, an inline list's with its generic ones
    sample_item_defaults = sample_defaults(None if samples_from == "inline" else spec.onetrainer_sample_defaults)
    sample_list = overlay_samples(samples, "samples.", ledger, sample_item_defaults) or []
    sample_items = sample_views(view, sample_list, "samples.", sample_item_defaults)
    map_sampling(view, out, sample_items, ema=ema, objective=spec.objective)
    map_saving(view, out, method)
    map_logging(view, out)
    _switched_off(view)
    leftovers(view, {"additional_embeddings": embedding_defaults()}, TOP_LEVEL_REASONS)
    for item in [*concept_items, *sample_items]:
        leftovers(item, {}, {})
    leftovers(optimizer, {}, {}, f"not a setting of the {out.get('training.optimizer')} optimizer here")
    return Imported(out.ordered(), path, version, concepts_from, samples_from, ledger.unsupported, ledger.notes)


def _objects(view: View, path: Path, key: str, file_key: str, what: str) -> tuple[Any, str]:
    """The inline value of `key` if it is not null (a list, or what the overlay refuses), else the list in the file
    `file_key` names.

    A missing file is a note: OneTrainer's presets name a concept file that is not there, and the concepts
    come with `data.concepts.0.path=...` on the command line (without any, the config names what to set);
    a missing file of samples means no previews, in OneTrainer as here. A folder named instead of a file is
    refused: it is the user's mistake, not a preset's.
    """
    view.skip(key, file_key)
    inline = view.data.get(key)
    if inline is not None:
        return inline, "inline"
    name = view.data.get(file_key) or ""
    found = find_list_file(name, path.parent) if name else None
    if found is not None and found.is_dir():
        why = f"a folder, not a {what} (a JSON list of {key}, as OneTrainer writes it)"
        if key == "concepts":
            why += f"; to train on its images, give it as data.concepts.0.path={found}"
        view.ledger.refuse(file_key, name, why)
        return [], "none"
    if found is None:
        why = f"no such {what} beside the config or in the working folder, so there are no {key}"
        if key == "concepts":
            why += " (give them with data.concepts.0.path=...)"
        view.ledger.note(file_key, name, why)
        return [], "none"
    return read_list(found, what), str(found)


def _switched_off(view: View) -> None:
    cloud = view.child("cloud")
    cloud.refuse("enabled", "remote (cloud) training is not supported")
    view.skip("cloud")
    quantization = view.child("quantization")
    for key in quantization.defaults:
        if key != "__version":
            quantization.ignore(key, "only used with quantised weight dtypes")
