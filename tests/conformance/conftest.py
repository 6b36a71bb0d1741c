"""The conformance suite's cases and runs: every registered family x tiny model x method, trained for real.

Cases come from the registry alone (`families()`, each spec's `tiny` models and `methods`), so a family
that registers is covered without editing this suite. Each case trains through the trainer's own path
(`train` with `build_parts`, which reaches the family's loader, setup, sampler and saver through the
registry); `build` is wrapped only to keep the parts in hand, to snapshot every tensor of the model
right after setup (LoRA injected, embeddings added) and again after the last step, and to note which
trained tensors receive a nonzero gradient (a hook on each, which leaves the gradient as it is).

One module-scoped run per case serves all the assertions about it: two steps with a preview at step
2 and a backup (the run under test), then, for the resume check, that backup continued for two more
steps and a separate four-step run straight through.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from onetrainer.util.family import FamilySpec, families

if TYPE_CHECKING:
    import torch

    from onetrainer.trainer.loop import TrainResult
    from onetrainer.trainer.parts import TrainingParts
    from onetrainer.util.config.schema import TrainConfig

METHODS = ("lora", "full", "embedding")
"""The training methods the suite knows how to check; a family's `methods` picks among them."""
PLACEHOLDER = "<conformance>"
PROMPT = "a red circle"
RESOLUTION = 64
STEPS = 2
SAMPLE_STEPS = 2


@dataclass(frozen=True)
class Case:
    """One family's tiny model trained with one method; `all_parts` trains every trainable part."""

    spec: FamilySpec
    tiny: str
    method: str
    all_parts: bool = False

    @property
    def id(self) -> str:
        return f"{self.tiny}-{self.method}{'-all-parts' if self.all_parts else ''}"

    @property
    def trained_parts(self) -> tuple[str, ...]:
        """The components whose weights (full) or adapters (lora) this case trains."""
        if self.method == "embedding":
            return ()
        wanted = [c for c in self.spec.components if c.trainable and (self.all_parts or c.trains_by_default)]
        return tuple(c.name for c in wanted)

    @property
    def placeholder(self) -> str:
        return PLACEHOLDER

    @property
    def prompt(self) -> str:
        """A caption like the training ones: with the placeholder when an embedding trains."""
        return f"{PLACEHOLDER} {PROMPT}" if self.method == "embedding" else PROMPT

    @property
    def output(self) -> str:
        """The output's name: a full model is saved as a diffusers folder, the rest as one file."""
        return "model" if self.method == "full" else "output.safetensors"

    def overrides(self) -> list[str]:
        """What makes this case's config differ from the suite's common one."""
        values = [f"model.type={self.spec.name}", f"model.base=tiny:{self.tiny}", f"method={self.method}"]
        if self.all_parts:
            values += [f"parts.{name}.train=true" for name in self.trained_parts]
        if self.method == "embedding":
            values += [f"embedding.placeholder={PLACEHOLDER}", "embedding.vectors=2"]
        return values


def cases() -> list[Case]:
    """Every registered family x tiny model x supported method; per family, its first tiny model also
    trains LoRA and full with every trainable part (text encoders too), where that differs from the default."""
    found = []
    for spec in families():
        methods = [method for method in METHODS if method in spec.methods]
        more_parts = any(c.trainable and not c.trains_by_default for c in spec.components)
        for index, tiny in enumerate(sorted(spec.tiny)):
            for method in methods:
                found.append(Case(spec, tiny, method))
                if index == 0 and method != "embedding" and more_parts:
                    found.append(Case(spec, tiny, method, all_parts=True))
    return found


CASES = cases()


@dataclass
class Run:
    """One finished training run and what the suite captured of it."""

    config: TrainConfig
    result: TrainResult
    parts: TrainingParts
    before: dict[str, torch.Tensor]
    """Every tensor of the model after setup, before the first step (`component.key`, `embeddings.name`)."""
    after: dict[str, torch.Tensor]
    events: list[dict[str, Any]] = field(default_factory=list)
    graded: set[str] = field(default_factory=set)
    """The trained tensors (names as in `trained`) that received a nonzero gradient in some step."""
    aliases: dict[str, str] = field(default_factory=dict)
    """State-dict keys of tied weights (T5's `encoder.embed_tokens` is its `shared`) -> the parameter's name."""

    @property
    def trained(self) -> dict[str, torch.Tensor]:
        """The run's trained tensors by their names in `before`/`after` (what a backup holds)."""
        return self.parts.setup.trainable_state_dict()


def model_tensors(model: Any) -> dict[str, torch.Tensor]:
    """Copies of every tensor of `model`: its components' state dicts and its embeddings' vectors.

    Keys match `trainable_state_dict()`: `<component>.<state-dict key>`, `embeddings.<placeholder>/<encoder>`.
    """
    tensors = {
        f"{name}.{key}": tensor.detach().clone()
        for name, module in model.modules()
        for key, tensor in module.state_dict().items()
    }
    for embedding in model.adapters.embeddings:
        for name, param in embedding.named_parameters().items():
            tensors[f"embeddings.{name}"] = param.detach().clone()
    return tensors


def watch_gradients(setup: Any) -> set[str]:
    """The names of the trained tensors that receive a nonzero gradient, filled in as the run goes.

    Not every trained tensor gets one: a model that reads an encoder's penultimate layer without its
    final norm (SDXL's CLIP-L, which takes its pooled output from the other encoder; SD 1.x with a layer
    skip) leaves the last layer and the norm out of the loss, as sd-scripts and diffusers do.
    """
    import torch

    names = {tensor.data_ptr(): name for name, tensor in setup.trainable_state_dict().items()}
    graded: set[str] = set()

    def hook(name: str) -> Callable[[torch.Tensor], None]:
        def note(grad: torch.Tensor) -> None:
            if bool(torch.any(grad != 0)):
                graded.add(name)

        return note

    for group in setup.parameter_groups():
        for param in group["params"]:
            param.register_hook(hook(names[param.data_ptr()]))
    return graded


def tied_aliases(model: Any) -> dict[str, str]:
    """`component.key` of every state-dict entry that is another name of a parameter (a tied weight)."""
    aliases: dict[str, str] = {}
    for name, module in model.modules():
        owners = {id(param): f"{name}.{key}" for key, param in module.named_parameters()}
        for key, param in module.named_parameters(remove_duplicate=False):
            if owners[id(param)] != f"{name}.{key}":
                aliases[f"{name}.{key}"] = owners[id(param)]
    return aliases


def case_config(case: Case, root: Path, dataset: Path, *overrides: str) -> TrainConfig:
    """The case's config: 64 px, batch 2, fp32 on the CPU, fp32 saves, no TensorBoard; `root` holds it all."""
    from onetrainer.util.config.loader import load_config

    prefix = f"{PLACEHOLDER} " if case.method == "embedding" else ""
    return load_config(
        None,
        [
            *case.overrides(),
            f"data.resolution={RESOLUTION}",
            f"data.concepts=[{{path: '{dataset}', caption: {{prefix: '{prefix}'}}}}]",
            "data.workers=0",
            "training.batch_size=2",
            "training.learning_rate=1e-2",
            "training.device=cpu",
            "training.precision=fp32",
            f"workspace={root / 'workspace'}",
            f"saving.output={root / 'out' / case.output}",
            "saving.dtype=fp32",
            "saving.backup_every=never",
            "logging.tensorboard=false",
            *overrides,
        ],
    )


def train_case(config: TrainConfig, *, resume: str | None = None) -> Run:
    """Train `config` through `train` and the registry's `build_parts`, keeping the parts and snapshots."""
    from onetrainer.trainer.components import build_parts
    from onetrainer.trainer.loop import train

    captured: dict[str, Any] = {}
    events: list[dict[str, Any]] = []

    def build(config: TrainConfig, **kwargs: Any) -> TrainingParts:
        parts = build_parts(config, **kwargs)
        captured["parts"] = parts
        captured["before"] = model_tensors(parts.model)
        captured["graded"] = watch_gradients(parts.setup)
        return parts

    result = train(config, build=build, resume=resume, progress=events.append)
    parts = captured["parts"]
    return Run(
        config,
        result,
        parts,
        captured["before"],
        model_tensors(parts.model),
        events,
        captured["graded"],
        tied_aliases(parts.model),
    )


@pytest.fixture(scope="session")
def tiny_folder(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """`tiny_folder(key)`: the tiny model `tiny:<key>` saved as a diffusers folder (built once per key)."""
    from onetrainer.util.tiny.models import save_tiny_model

    folders: dict[str, Path] = {}

    def folder(key: str) -> Path:
        if key not in folders:
            folders[key] = save_tiny_model(key, tmp_path_factory.mktemp("conformance-tiny") / key)
        return folders[key]

    return folder


@pytest.fixture(scope="module", params=CASES, ids=[case.id for case in CASES])
def case(request: pytest.FixtureRequest) -> Case:
    return request.param


def _run_overrides(case: Case) -> list[str]:
    """The run under test: two steps, a preview and a backup at step 2."""
    preview = f"{{prompt: '{case.prompt}', steps: {SAMPLE_STEPS}, width: {RESOLUTION}, height: {RESOLUTION}}}"
    return [
        f"training.max_steps={STEPS}",
        f"sampling.prompts=[{preview}]",
        f"sampling.every={STEPS} steps",
        f"saving.backup_every={STEPS} steps",
    ]


@pytest.fixture(scope="module")
def run(case: Case, tmp_path_factory: pytest.TempPathFactory, shapes_dataset_dir: Path) -> Run:
    """The case trained for two steps, with a preview and a backup at step 2."""
    root = tmp_path_factory.mktemp(f"conformance-{case.id}")
    return train_case(case_config(case, root, shapes_dataset_dir, *_run_overrides(case)))


@pytest.fixture(scope="module")
def resumed(case: Case, run: Run, shapes_dataset_dir: Path) -> Run:
    """`run` continued from its step-2 backup (`resume="last"`) for two more steps, into another output."""
    root = Path(run.config.workspace).parent
    longer = [f"training.max_steps={2 * STEPS}", f"saving.output={root / 'resumed' / case.output}"]
    return train_case(case_config(case, root, shapes_dataset_dir, *_run_overrides(case), *longer), resume="last")


@pytest.fixture(scope="module")
def straight(case: Case, tmp_path_factory: pytest.TempPathFactory, shapes_dataset_dir: Path) -> Run:
    """The case trained for four steps without stopping (and without previews or backups)."""
    root = tmp_path_factory.mktemp(f"conformance-{case.id}-straight")
    return train_case(case_config(case, root, shapes_dataset_dir, f"training.max_steps={2 * STEPS}"))
