"""The conformance suite: what every registered family must do with every method it supports.

Each test runs for every case of the conftest's `CASES` (family x tiny model x method, plus LoRA and
full runs that train every trainable part): two real training steps with a finite loss; every trained
tensor that got a gradient moves, every trained part moves, and nothing else does; the output, and the
method's other layout, read back to the trained tensors bit for bit; the preview sampler draws;
diffusers' own loaders read the outputs and compute what the trained model computes; and a run
continued from a backup ends bit-identical to one that never stopped.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

OTHER_FORMAT = {"lora": "peft", "full": "single-file", "embedding": "diffusers"}
"""Each method's second save layout (the run's own output uses `auto`: the family's LoRA layout for the parts
that train, a diffusers folder, a1111); a LoRA that `auto` saves as peft gets kohya as the second."""


def _other_format(case: Any) -> str:
    if case.method == "lora" and _layout(case, "the run's output") == "peft" and case.spec.lora_naming is not None:
        return "kohya"
    return OTHER_FORMAT[case.method]


def _has_other_format(case: Any) -> bool:
    """Whether the family writes the case's second layout: a single file needs the family's original
    layout holding every trained part (some families' single file holds the denoiser alone), and a
    diffusers embedding file holds the vectors of one text encoder."""
    spec = case.spec
    if case.method == "full":
        if spec.single_file is None:
            return False
        held = {component for _, component in spec.single_file.component_prefixes}
        return set(case.trained_parts) <= held
    if case.method == "embedding":
        return len(_embedding_encoders(spec)) == 1
    return True


def _layout(case: Any, fmt: str) -> str:
    """The save layout `fmt` names: the run's own output is saved with `auto`."""
    if fmt != "the run's output":
        return fmt
    auto = {"lora": case.spec.auto_lora_format_for(case.trained_parts), "full": "diffusers"}
    return auto.get(case.method, "a1111")


def _assert_same(ours: Mapping[str, torch.Tensor], theirs: Mapping[str, torch.Tensor], what: str) -> None:
    assert sorted(theirs) == sorted(ours), f"{what}: other keys"
    differing = [key for key in ours if not torch.equal(ours[key], theirs[key])]
    assert not differing, f"{what}: {len(differing)} tensors differ, e.g. {differing[0]}"


def _component_tensors(model: Any) -> dict[str, torch.Tensor]:
    return {f"{name}.{key}": tensor for name, module in model.modules() for key, tensor in module.state_dict().items()}


def _save(run: Any, path: Path, fmt: str) -> Path:
    from onetrainer.util.registry import ModuleKind, lookup

    saver = lookup(ModuleKind.SAVER, run.config.model.type)()
    return saver.save(run.parts.model, path, method=run.config.method, format=fmt, dtype="fp32", config=run.config)[0]


def _embedding_encoders(spec: Any) -> list[Any]:
    return [component for component in spec.text_encoders if component.embedding_key is not None]


@pytest.fixture(scope="module")
def other_layout(run: Any, case: Any, tmp_path_factory: pytest.TempPathFactory) -> Path | None:
    """The trained result saved in its method's other layout; None if the family has no such layout."""
    method = run.config.method.value
    if not _has_other_format(case):
        return None
    name = "model.safetensors" if method == "full" else f"{_other_format(case)}.safetensors"
    return _save(run, tmp_path_factory.mktemp("other-layout") / name, _other_format(case))


def _need(path: Path | None) -> Path:
    if path is None:
        pytest.skip("the family has no second layout for this method")
    return path


# ------------------------------------------------------------------------------------------ training
def test_two_steps_train_with_a_finite_loss(run: Any) -> None:
    losses = [event["loss"] for event in run.events if event["event"] == "step"]
    assert run.result.step == run.config.training.max_steps == len(losses)
    assert all(math.isfinite(loss) for loss in losses), losses
    assert run.result.final_loss == losses[-1]


def test_trained_tensors_change_and_frozen_ones_do_not(run: Any) -> None:
    assert sorted(run.after) == sorted(run.before)
    trained = set(run.trained)
    assert trained, "the run trained nothing"
    assert trained <= set(run.before), f"trained tensors the snapshot lacks: {sorted(trained - set(run.before))[:3]}"
    assert run.graded <= trained, f"gradients noted for untrained tensors: {sorted(run.graded - trained)[:3]}"
    moved = {key for key, tensor in run.after.items() if not torch.equal(tensor, run.before[key])}
    assert sorted(run.graded - moved) == [], "trained tensors that got a gradient and did not move"
    tied = {alias for alias, key in run.aliases.items() if key in trained}
    assert sorted(moved - trained - tied) == [], "frozen tensors that moved"
    assert sorted((moved & trained) - run.graded) == [], "trained tensors that got no gradient and moved"
    parts = {key.partition(".")[0] for key in trained}
    assert sorted(parts - {key.partition(".")[0] for key in moved}) == [], "trained parts that did not move"


def test_the_method_trains_its_own_tensors(run: Any, case: Any) -> None:
    trained = set(run.trained)
    model = run.parts.model
    if case.method == "embedding":
        encoders = _embedding_encoders(case.spec)
        assert encoders, "a family with the embedding method needs a text encoder that takes embeddings"
        assert trained == {f"embeddings.{case.placeholder}/{encoder.name}" for encoder in encoders}
        assert all(run.after[key].shape[0] == 2 for key in trained)
        return
    assert {key.partition(".")[0] for key in trained} == set(case.trained_parts)
    if case.method == "lora":
        assert all(".lora_" in key for key in trained), "LoRA trains only adapter tensors"
        assert all(".lora_" not in key for key in set(run.before) - trained), "untrained adapters were injected"
    else:
        whole = {
            f"{name}.{key}"
            for name in case.trained_parts
            for key, _ in model.components[name].named_parameters()
            if not _in_layers(key, case.spec.component(name).unused_in(model.components[name]))
        }
        assert trained == whole, "a full fine-tune trains every weight of its parts (but of layers the model discards)"


def _in_layers(key: str, layers: frozenset[str]) -> bool:
    return any(key == layer or key.startswith(layer + ".") for layer in layers)


# -------------------------------------------------------------------------------------- save, reload
def _reads_back(run: Any, path: Path, fmt: str, tiny_folder: Callable[[str], Path], case: Any) -> None:
    """The file at `path` read by our own readers holds exactly the trained tensors."""
    from onetrainer.model.adapters.embedding import read_embedding_file
    from onetrainer.model.adapters.lora_file import matched_to, read_lora_file
    from onetrainer.model_loader.pipeline import load_model
    from onetrainer.model_saver.adapter_files import lora_from_model

    model, spec = run.parts.model, case.spec
    if case.method == "lora":
        loaded = read_lora_file(path, spec)
        tensors, alphas, _ = lora_from_model(model)
        read, read_alphas = matched_to(model, loaded.tensors, loaded.alphas)  # a file's CLIP paths, as the model's
        _assert_same(tensors, read, f"{fmt} LoRA")
        assert read_alphas == alphas
    elif case.method == "embedding":
        _assert_same(model.adapters.embeddings[0].vectors(), read_embedding_file(path, spec), f"{fmt} embedding")
    else:
        options = {"config": str(tiny_folder(case.tiny))} if fmt == "single-file" else {}
        loaded = load_model(path, model_type=spec.name, **options)
        _assert_same(_component_tensors(model), _component_tensors(loaded), f"{fmt} model")
        assert loaded.prediction_type == model.prediction_type


def test_output_reads_back_exactly(run: Any, case: Any, tiny_folder: Callable[[str], Path]) -> None:
    output = run.result.output
    assert output is not None
    assert output.exists()
    _reads_back(run, output, "the run's output", tiny_folder, case)


def test_the_output_takes_the_auto_layout(run: Any, case: Any) -> None:
    """`saving.format: auto` writes the family's layout for what trained: for a LoRA on a part that other tools
    read only as kohya, kohya, whatever the family's default."""
    from onetrainer.util.detect import detect_path

    assert run.result.output is not None
    assert detect_path(run.result.output).layout == _layout(case, "the run's output")


def test_other_layout_reads_back_exactly(
    run: Any, case: Any, other_layout: Path | None, tiny_folder: Callable[[str], Path]
) -> None:
    _reads_back(run, _need(other_layout), _other_format(case), tiny_folder, case)


def test_the_recorded_config_reproduces_the_run(run: Any) -> None:
    """The workspace's `config.yaml` (also what a backup holds) loads back to the run's config."""
    from onetrainer.util.config.loader import load_config

    assert load_config(Path(run.config.workspace) / "config.yaml") == run.config


# ------------------------------------------------------------------------------------------ sampling
def test_the_preview_is_drawn(run: Any) -> None:
    path = Path(run.config.workspace) / "samples" / f"step-{run.config.training.max_steps:08d}-0.png"
    assert path.is_file(), [event for event in run.events if event["event"] == "warning"]
    with Image.open(path) as image:
        assert image.size == (run.config.data.resolution, run.config.data.resolution)
        pixels = np.asarray(image.convert("RGB"), dtype=np.float32)
    assert pixels.std() > 0, "the preview is one flat colour"


# --------------------------------------------------------------------------------- diffusers' loaders
def _pipeline(case: Any, source: Path, *, single_file_config: Path | None = None) -> Any:
    """The family's diffusers pipeline class (the spec's first `pipeline_classes`) loading `source`."""
    import diffusers

    cls = getattr(diffusers, case.spec.pipeline_classes[0])
    if single_file_config is not None:
        pipe = cls.from_single_file(str(source), config=str(single_file_config), local_files_only=True)
    else:
        pipe = cls.from_pretrained(str(source), local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _outputs(run: Any, model: Any, prompt: str) -> dict[str, torch.Tensor]:
    """The conditioning of `prompt` and the denoiser's output on fixed noisy latents, through the family's
    own hooks; the noise, timesteps and size inputs are the same for every model, so two models that
    compute the same function give the same tensors."""
    setup, spec = run.parts.setup, model.spec
    side = run.config.data.resolution // spec.latent_scale
    generator = torch.Generator().manual_seed(0)
    latents = torch.randn(1, spec.latent_channels, side, side, generator=generator)
    noised = setup.objective(latents, generator, image_seq_len=(side // spec.patch_size) ** 2)
    layer_skip = {name: part.layer_skip for name, part in run.config.parts.items()}
    size = torch.tensor([[run.config.data.resolution] * 2])
    batch = {"captions": [prompt], "original_size": size, "crop_top_left": torch.zeros_like(size), "target_size": size}
    for _, module in model.modules():
        module.eval()
    with torch.no_grad():
        conditioner = setup.hooks.conditioner(model, layer_skip=layer_skip, device=torch.device("cpu"))
        conditioning = conditioner.encode([prompt])
        prediction = setup.hooks.denoise(model, noised.noisy, noised.timesteps, conditioning, batch)
    return {**conditioning, "prediction": prediction.float()}


def _computes_like_the_trained_model(run: Any, case: Any, pipe: Any, base: Any) -> None:
    """`pipe` (diffusers with our file loaded) encodes and predicts what the trained model does, and does
    not predict what the base model does: the file was applied, all of it."""
    from onetrainer.model.diffusion import DiffusionModel

    prompt = case.prompt
    if case.method == "embedding":
        # diffusers writes a multi-vector placeholder as its n tokens itself, in its pipelines' prompt handling
        tokenizer = next(c.tokenizer for c in _embedding_encoders(case.spec))
        prompt = pipe.maybe_convert_prompt(prompt, getattr(pipe, tokenizer))
    ours = _outputs(run, run.parts.model, case.prompt)
    theirs = _outputs(run, DiffusionModel.from_pipeline(pipe, case.spec, source="diffusers"), prompt)
    before = _outputs(run, DiffusionModel.from_pipeline(base, case.spec, source="diffusers"), prompt)
    assert sorted(theirs) == sorted(ours)
    for key, tensor in ours.items():
        gap = (tensor - theirs[key]).abs().max().item()
        assert gap <= 1e-5 * max(1.0, tensor.abs().max().item()), f"diffusers' {key} is {gap:.3g} off ours"
    effect = (ours["prediction"] - before["prediction"]).abs().max().item()
    assert effect > 1e-3, f"the file changes diffusers' prediction by only {effect:.3g}"


def _loads_in_diffusers(run: Any, case: Any, path: Path, fmt: str, tiny_folder: Callable[[str], Path]) -> None:
    from onetrainer.model.diffusion import DiffusionModel

    unreadable = case.spec.tiny[case.tiny].diffusers_cannot_read.get(_layout(case, fmt))
    if unreadable is not None:
        pytest.skip(f"diffusers cannot read the tiny model's {_layout(case, fmt)} files: {unreadable}")
    base = tiny_folder(case.tiny)
    if case.method == "full":
        pipe = _pipeline(case, path, single_file_config=base if fmt == "single-file" else None)
        loaded = DiffusionModel.from_pipeline(pipe, case.spec, source=str(path))
        _assert_same(_component_tensors(run.parts.model), _component_tensors(loaded), f"diffusers' {fmt} model")
        if run.parts.model.prediction_type is not None:
            assert pipe.scheduler.config.prediction_type == run.parts.model.prediction_type
        return
    pipe = _pipeline(case, base)
    if case.method == "lora":
        loadable = getattr(type(pipe), "_lora_loadable_modules", case.trained_parts)
        beyond = [part for part in case.trained_parts if part not in loadable]
        if beyond:
            pytest.skip(f"diffusers' {type(pipe).__name__} loads no LoRA for its {', '.join(beyond)}")
        pipe.load_lora_weights(str(path.parent), weight_name=path.name)
    else:
        if not hasattr(pipe, "load_textual_inversion"):
            pytest.skip(f"diffusers' {type(pipe).__name__} loads no textual-inversion embeddings")
        encoders = _embedding_encoders(case.spec)
        if len(encoders) == 1:
            pipe.load_textual_inversion(str(path), token=case.placeholder)
        else:
            from safetensors.torch import load_file

            vectors = load_file(path)
            for encoder in encoders:
                pipe.load_textual_inversion(
                    vectors[encoder.embedding_key],
                    token=case.placeholder,
                    text_encoder=getattr(pipe, encoder.name),
                    tokenizer=getattr(pipe, encoder.tokenizer),
                )
    _computes_like_the_trained_model(run, case, pipe, _pipeline(case, base))


def test_output_loads_in_diffusers(run: Any, case: Any, tiny_folder: Callable[[str], Path]) -> None:
    _loads_in_diffusers(run, case, run.result.output, "the run's output", tiny_folder)


def test_other_layout_loads_in_diffusers(
    run: Any, case: Any, other_layout: Path | None, tiny_folder: Callable[[str], Path]
) -> None:
    _loads_in_diffusers(run, case, _need(other_layout), _other_format(case), tiny_folder)


# -------------------------------------------------------------------------------------------- resume
def test_resume_is_bit_exact(run: Any, resumed: Any, straight: Any) -> None:
    starts = [event["step"] for event in resumed.events if event["event"] == "start"]
    assert starts == [run.config.training.max_steps], "the resumed run did not continue the backup"
    assert resumed.result.step == straight.result.step
    _assert_same(straight.trained, resumed.trained, "resumed vs straight")
