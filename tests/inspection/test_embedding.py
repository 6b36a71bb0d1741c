"""`inspect` on textual-inversion embeddings in the A1111, SDXL, diffusers and legacy pickle layouts."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from onetrainer.inspection.dispatch import inspect_path
from onetrainer.util.errors import UserError
from onetrainer.util.family import find_family


def test_a1111_sd15_embedding(tmp_path: Path) -> None:
    save_file({"emb_params": torch.zeros(3, 768)}, tmp_path / "sks.safetensors")

    result = inspect_path(tmp_path / "sks.safetensors")

    assert (result.kind, result.format, result.model_type) == ("embedding", "a1111", "sd15")
    assert (result.details["vectors"], result.details["width"], result.details["fits"]) == (3, "768", "SD 1.x")


def test_sdxl_embedding_has_one_tensor_per_encoder(tmp_path: Path) -> None:
    if find_family("sdxl") is None:
        pytest.skip("the SDXL family is not registered in this build yet")
    save_file({"clip_l": torch.zeros(2, 768), "clip_g": torch.zeros(2, 1280)}, tmp_path / "xl.safetensors")

    result = inspect_path(tmp_path / "xl.safetensors")

    assert result.model_type == "sdxl"
    assert result.details["tensors"]["clip_g"] == {
        "encoder": "CLIP-G (bigG)",
        "vectors": 2,
        "width": 1280,
        "dtype": "float32",
    }
    assert result.details["width"] == "1280+768"


def test_diffusers_embedding_names_its_token(tmp_path: Path) -> None:
    save_file({"<my-cat>": torch.zeros(1, 1024, dtype=torch.float16)}, tmp_path / "learned_embeds.safetensors")

    result = inspect_path(tmp_path / "learned_embeds.safetensors")

    assert (result.format, result.model_type, result.details["token"]) == ("diffusers", "sd2", "<my-cat>")
    assert result.details["tensors"]["<my-cat>"]["dtype"] == "float16"


def test_legacy_a1111_pickle(tmp_path: Path) -> None:
    payload = {"string_to_param": {"*": torch.zeros(4, 768)}, "string_to_token": {"*": 265}, "name": "mytoken"}
    torch.save(payload, tmp_path / "mytoken.pt")

    result = inspect_path(tmp_path / "mytoken.pt")

    assert (result.kind, result.format, result.model_type) == ("embedding", "a1111-pt", "sd15")
    assert (result.details["token"], result.details["vectors"]) == ("mytoken", 4)


def test_embedding_of_unknown_width_does_not_guess(tmp_path: Path) -> None:
    save_file({"emb_params": torch.zeros(2, 32)}, tmp_path / "tiny.safetensors")

    result = inspect_path(tmp_path / "tiny.safetensors")

    assert result.model_type is None
    assert result.details["fits"] is None
    assert "undetermined" in result.summary


def _saved_embedding(folder: Path, base: str, **options: object) -> Path:
    """An embedding on the tiny `base` model, written by our saver with the metadata a run gives it."""
    from onetrainer.model.adapters.embedding import add_embedding
    from onetrainer.model_loader.pipeline import load_model
    from onetrainer.model_saver.diffusion import DiffusionSaver
    from onetrainer.util.enums import TrainingMethod

    model = load_model(f"tiny:{base}", options=options)
    model.adapters.embeddings = [add_embedding(model, "<shape>", count=2, init_text="circle")]
    (path,) = DiffusionSaver().save(model, folder / f"{base}.safetensors", method=TrainingMethod.EMBEDDING)
    return path


def _rewritten(path: Path, target: Path, architecture: str | None) -> Path:
    """`path`'s tensors as another trainer writes them: with its `modelspec.architecture` and without our kohya
    (`ss_*`) keys, or with no metadata at all (None)."""
    with safe_open(str(path), "pt") as handle:
        modelspec = {k: v for k, v in (handle.metadata() or {}).items() if k.startswith("modelspec.")}
    metadata = None if architecture is None else {**modelspec, "modelspec.architecture": architecture}
    save_file(load_file(path), target, metadata)
    return target


@pytest.fixture(scope="module")
def sd3_without_t5(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _saved_embedding(tmp_path_factory.mktemp("sd3-embedding"), "sd35-large", t5=False)


@pytest.mark.parametrize(("base", "title"), [("sd35-large", "SD 3.5 Large"), ("sd3-medium", "SD 3 Medium")])
def test_an_sd3_embedding_without_t5_fits_the_model_its_metadata_names(tmp_path: Path, base: str, title: str) -> None:
    """CLIP-L and bigG vectors alone have SDXL's keys and shapes: the metadata our saver writes tells them apart."""
    path = _saved_embedding(tmp_path, base, t5=False)
    assert set(load_file(path)) == {"clip_l", "clip_g"}

    result = inspect_path(path)

    assert (result.model_type, result.details["fits"]) == (base, title)
    assert result.details["detected_by"] == "header metadata"


@pytest.mark.parametrize(
    ("architecture", "model_type", "fits"),
    [
        ("stable-diffusion-v3.5/embedding", None, "SD 3.5 Large/SD 3.5 Medium (undetermined)"),
        ("stable-diffusion-v3-medium/embedding", "sd3-medium", "fits SD 3 Medium"),
        ("stable-diffusion-3-5-medium/textual-inversion", "sd35-medium", "fits SD 3.5 Medium"),
        ("stable-diffusion-3/textual-inversion", None, "SD 3 Medium/SD 3.5 Large/SD 3.5 Medium (undetermined)"),
    ],
)
def test_other_trainers_sd3_architecture_values_rule_sdxl_out(
    sd3_without_t5: Path, tmp_path: Path, architecture: str, model_type: str | None, fits: str
) -> None:
    """OneTrainer writes one value for both 3.5 sizes, sd-scripts "stable-diffusion-3-" and its model type."""
    result = inspect_path(_rewritten(sd3_without_t5, tmp_path / "other.safetensors", architecture))

    assert result.model_type == model_type
    assert fits in result.summary
    assert "SDXL" not in result.summary


def test_an_sdxl_embedding_is_sdxl_with_or_without_its_metadata(sd3_without_t5: Path, tmp_path: Path) -> None:
    """Without metadata the keys decide: CLIP-L + bigG vectors are SDXL's, whoever wrote them."""
    if find_family("sdxl") is None:
        pytest.skip("the SDXL family is not registered in this build yet")
    ours = _saved_embedding(tmp_path, "sdxl")
    bare_sdxl = _rewritten(ours, tmp_path / "bare-sdxl.safetensors", None)
    bare_sd3 = _rewritten(sd3_without_t5, tmp_path / "bare-sd3.safetensors", None)
    for path, reason in ((ours, "header metadata"), (bare_sdxl, "clip_l and clip_g"), (bare_sd3, "clip_l and clip_g")):
        result = inspect_path(path)
        assert (result.model_type, result.details["fits"]) == ("sdxl", "SDXL"), path.name
        assert result.details["detected_by"].startswith(reason), path.name


@pytest.mark.parametrize(
    ("encoders", "candidates"),
    [
        ({"clip_l": 768, "clip_g": 1280, "t5": 4096}, {"sd3-medium", "sd35-large", "sd35-medium"}),
        ({"clip_l": 768, "t5": 4096}, {"flux-dev", "flux-schnell"}),
    ],
)
def test_onetrainers_embeddings_with_t5_under_its_own_key_are_recognised(
    encoders: dict[str, int], candidates: set[str], tmp_path: Path
) -> None:
    # OneTrainer writes SD 3's and FLUX.1's T5 vectors under `t5` where we (and sd-scripts) write `t5xxl`.
    path = tmp_path / "onetrainer.safetensors"
    save_file({key: torch.ones(2, width) for key, width in encoders.items()}, path)
    from onetrainer.util.detect import detect_path

    assert set(detect_path(path).candidates) == candidates
    result = inspect_path(path)
    assert result.kind == "embedding"
    assert result.details["tensors"]["t5"] == {"encoder": "T5", "vectors": 2, "width": 4096, "dtype": "float32"}
    ours = tmp_path / "ours.safetensors"
    save_file({("t5xxl" if key == "t5" else key): torch.ones(2, width) for key, width in encoders.items()}, ours)
    assert result.details["fits"] == inspect_path(ours).details["fits"] is not None


@pytest.mark.parametrize(
    "encoders",
    [{"clip_l_out": 768}, {"clip_l_out": 768, "clip_g_out": 1280}, {"clip_l_out": 768, "t5_out": 4096}],
)
def test_onetrainers_output_embeddings_are_refused_by_name(encoders: dict[str, int], tmp_path: Path) -> None:
    """Vectors for a text encoder's output are not token vectors: a lone `clip_l_out` has the shape of an SD 1.x
    embedding, and reading it as one would condition on other values."""
    from onetrainer.util.detect import detect_path

    path = tmp_path / "output.safetensors"
    save_file({key: torch.ones(2, width) for key, width in encoders.items()}, path)
    with pytest.raises(UserError, match="is an output embedding") as error:
        detect_path(path)
    assert all(key in str(error.value) for key in encoders)
    inputs = tmp_path / "input.safetensors"
    save_file({key.removesuffix("_out"): torch.ones(2, width) for key, width in encoders.items()}, inputs)
    assert detect_path(inputs).kind == "embedding"
