"""Loop fixtures: a toy model family implementing the parts the loop trains with, for fast, exact tests.

A two-layer network with dropout (so the global torch RNG matters), noise drawn from the loop's
generator (so the noise stream matters) and data keyed by (seed, epoch, index) like the real data
plan. Failure switches make it diverge (loss or gradients) or crash at a chosen step, or fail to save.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image

from onetrainer.trainer.parts import TrainingParts
from onetrainer.util.atomic import save_safetensors
from onetrainer.util.config.loader import load_config
from onetrainer.util.config.schema import TrainConfig

Hook = Callable[[str, int], None]
"""Called with ("predict" or "state_dict", optimizer steps done) to inject events mid-step."""


class _InfiniteGradient(torch.autograd.Function):
    """Identity forward, infinite gradient backward: a finite loss whose update would ruin the weights."""

    @staticmethod
    def forward(ctx: Any, value: torch.Tensor) -> torch.Tensor:
        return value.clone()

    @staticmethod
    def backward(ctx: Any, gradient: torch.Tensor) -> torch.Tensor:
        return gradient * float("inf")


class ToySetup:
    """Trains two layers as the parts `unet` and `text_encoder`, each at its `parts.<name>.learning_rate`
    (as the real setup gives its groups), else the run's."""

    def __init__(
        self,
        config: TrainConfig,
        *,
        nan_at_step: int | None = None,
        bad_gradient_at_step: int | None = None,
        bad_gradients_from_step: int | None = None,
        fail_at_step: int | None = None,
        hook: Hook | None = None,
    ) -> None:
        self.model = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.Dropout(0.2), torch.nn.Linear(16, 4))
        self.config = config
        self.nan_at_step = nan_at_step
        self.bad_gradient_at_step = bad_gradient_at_step
        self.bad_gradients_from_step = bad_gradients_from_step
        self.fail_at_step = fail_at_step
        self.hook = hook
        self.step = 0
        self.steps_seen: list[int] = []

    def parameter_groups(self) -> list[dict[str, Any]]:
        layers = {"unet": self.model[0], "text_encoder": self.model[2]}
        rates = {name: part.learning_rate for name, part in self.config.parts.items()}
        return [
            {
                "params": list(layer.parameters()),
                "name": name,
                "lr": rates.get(name) or self.config.training.learning_rate,
            }
            for name, layer in layers.items()
        ]

    def on_step(self, step: int, epoch: int) -> None:
        self.step = step
        self.steps_seen.append(step)
        if self.fail_at_step is not None and step + 1 == self.fail_at_step:
            raise RuntimeError("toy failure")

    def predict(self, batch: dict[str, torch.Tensor], generator: torch.Generator) -> dict[str, torch.Tensor]:
        if self.hook is not None:
            self.hook("predict", self.step)
        noise = torch.randn(batch["x"].shape, generator=generator, device=batch["x"].device)
        return {"prediction": self.model(batch["x"] + 0.1 * noise), "target": batch["y"]}

    def loss(self, prediction: dict[str, torch.Tensor], batch: dict[str, torch.Tensor]) -> torch.Tensor:
        loss = torch.nn.functional.mse_loss(prediction["prediction"].float(), prediction["target"])
        if self.nan_at_step is not None and self.step + 1 >= self.nan_at_step:
            return loss * float("nan")
        from_step = self.bad_gradients_from_step
        if self.step + 1 == self.bad_gradient_at_step or (from_step is not None and self.step + 1 >= from_step):
            return _InfiniteGradient.apply(loss)
        return loss

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        if self.hook is not None:
            self.hook("state_dict", self.step)
        return {key: value.detach().clone() for key, value in self.model.state_dict().items()}

    def load_trainable_state_dict(self, weights: dict[str, torch.Tensor]) -> None:
        self.model.load_state_dict(weights)

    def train(self) -> None:
        self.model.train()

    def eval(self) -> None:
        self.model.eval()


class ToyData:
    def __init__(self, seed: int, batches: int = 5, batch_size: int = 2) -> None:
        self.seed = seed
        self.batches_per_epoch = batches
        self.batch_size = batch_size
        self.cache_filled = False

    def fill_cache(self) -> None:
        self.cache_filled = True

    def fingerprint(self) -> str:
        return f"toy:{self.seed}:{self.batches_per_epoch}:{self.batch_size}"

    def batches(self, epoch: int, start: int = 0) -> Iterator[dict[str, torch.Tensor]]:
        for index in range(start, self.batches_per_epoch):
            generator = torch.Generator().manual_seed(self.seed * 10_000 + epoch * 100 + index)
            x = torch.randn(self.batch_size, 4, generator=generator)
            yield {"x": x, "y": x.flip(-1) * 0.5}


class ToySampler:
    def __init__(self, setup: ToySetup) -> None:
        self.setup = setup
        self.calls = 0

    def sample(self, prompt: str, negative_prompt: str = "", **settings: Any) -> list[Image.Image]:
        self.calls += 1
        torch.rand(3)
        level = int(abs(float(self.setup.model[0].weight.detach().sum())) * 10) % 256
        return [Image.new("RGB", (settings["width"], settings["height"]), (level, 0, 0))]


def make_toy_build(
    *,
    nan_at_step: int | None = None,
    bad_gradient_at_step: int | None = None,
    bad_gradients_from_step: int | None = None,
    fail_at_step: int | None = None,
    save_error: Exception | None = None,
    batches: int = 5,
    validation: bool = False,
    hook: Hook | None = None,
) -> Callable[..., TrainingParts]:
    """A `build` function for `trainer.loop.train`; keeps the last parts it built in `.last`."""

    def build(
        config: Any, *, device: torch.device, workspace: Any, rank: int, world_size: int, progress: Any
    ) -> TrainingParts:
        setup = ToySetup(
            config,
            nan_at_step=nan_at_step,
            bad_gradient_at_step=bad_gradient_at_step,
            bad_gradients_from_step=bad_gradients_from_step,
            fail_at_step=fail_at_step,
            hook=hook,
        )
        data = ToyData(config.training.seed, batches=batches, batch_size=config.training.batch_size)

        def save_model(path: Path) -> Path:
            if save_error is not None:
                raise save_error
            save_safetensors(setup.trainable_state_dict(), path)
            return path

        parts = TrainingParts(
            model=setup.model,
            setup=setup,
            data=data,
            batches_in_epoch=lambda epoch: data.batches_per_epoch,
            save_model=save_model,
            sampler=ToySampler(setup),
            validation_batches=(lambda: enumerate(ToyData(config.training.seed + 1, batches=2).batches(0)))
            if validation
            else None,
        )
        build.last = parts
        return parts

    build.last = None
    return build


@pytest.fixture
def toy_build() -> Callable[..., Callable[..., TrainingParts]]:
    """`toy_build(nan_at_step=, bad_gradient_at_step=, fail_at_step=, save_error=, batches=, validation=, hook=)`
    makes a `build` function."""
    return make_toy_build


def make_toy_config(root: Path, *overrides: str) -> TrainConfig:
    """A toy run's config: workspace and output under `root`, 2 epochs of 5 batches, no backups, no logs."""
    return load_config(
        None,
        [
            "model.base=org/toy",
            f"workspace={root / 'workspace'}",
            f"saving.output={root / 'out' / 'model.safetensors'}",
            "training.device=cpu",
            "training.epochs=2",
            "training.batch_size=2",
            "training.learning_rate=0.01",
            "saving.backup_every=never",
            "logging.tensorboard=false",
            *overrides,
        ],
    )


@pytest.fixture
def toy_config() -> Callable[..., TrainConfig]:
    """`toy_config(root, *overrides)` makes a toy run's config (see `make_toy_config`)."""
    return make_toy_config
