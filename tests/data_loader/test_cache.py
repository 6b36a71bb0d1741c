"""The content-keyed cache: encode only what is missing, notice changes, resume a killed pass."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image

from onetrainer.data_loader import build_data_loader
from onetrainer.data_loader.tiny import TinyImageEncoder, TinyTextEncoder
from onetrainer.util.errors import UserError


class ShapeRecorder(TinyImageEncoder):
    def __init__(self) -> None:
        super().__init__()
        self.shapes: list[tuple[int, ...]] = []

    def encode(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        self.shapes.append(tuple(images.shape))
        return super().encode(images)


class Killed(TinyImageEncoder):
    """Dies (like Ctrl-C) on its third call."""

    def encode(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        if self.calls == 2:
            raise KeyboardInterrupt
        return super().encode(images)


def _fill(config, image=None, text=None, **kwargs):
    image = image if image is not None else TinyImageEncoder()
    text = text if text is not None else TinyTextEncoder()
    with build_data_loader(config, image_encoder=image, text_encoder=text, **kwargs) as loader:
        return loader.fill_cache(), image, text


def test_second_pass_encodes_nothing_and_loads_no_encoder(make_config, image_copy: Path) -> None:
    config = make_config(concepts=[{"path": image_copy, "image_variations": 2}])
    first, _, _ = _fill(config)
    assert (first.images_encoded, first.texts_encoded) == (16, 8)
    second, image, text = _fill(config)
    assert (second.images_found, second.images_encoded, second.texts_encoded) == (16, 0, 0)
    assert image.loads == text.loads == 0


def test_encoders_run_batched_per_bucket(make_config, image_copy: Path) -> None:
    config = make_config(concepts=[{"path": image_copy, "repeats": 1}], data={"encode_batch_size": 4})
    recorder = ShapeRecorder()
    with build_data_loader(config, image_encoder=recorder) as loader:
        stats = loader.fill_cache()
        counts = loader.plan.bucket_counts(0)
    assert stats.image_calls == len(recorder.shapes) == sum(-(-n // 4) for n in counts.values())
    assert sum(shape[0] for shape in recorder.shapes) == 8
    assert recorder.weight is None, "unloaded after the pass"


def test_changed_file_is_reencoded_alone_and_its_old_entry_pruned(make_config, image_copy: Path) -> None:
    config = make_config(concepts=[{"path": image_copy}])
    _fill(config)
    Image.new("RGB", (64, 64), (1, 2, 3)).save(image_copy / "img-000.png")
    stats, _, _ = _fill(config)
    assert (stats.images_encoded, stats.images_found, stats.pruned) == (1, 7, 1)


def test_added_file_is_encoded_alone(make_config, image_copy: Path) -> None:
    config = make_config(concepts=[{"path": image_copy}])
    _fill(config)
    shutil.copy(image_copy / "img-003.png", image_copy / "new.png")
    stats, _, _ = _fill(config)
    assert (stats.images_encoded, stats.images_found, stats.pruned) == (1, 8, 0)


def test_removed_file_is_pruned(make_config, image_copy: Path) -> None:
    config = make_config(concepts=[{"path": image_copy}])
    _fill(config)
    (image_copy / "img-005.webp").unlink()
    (image_copy / "img-005.txt").unlink()
    stats, _, _ = _fill(config)
    assert (stats.images_encoded, stats.images_found, stats.pruned) == (0, 7, 2)


def test_killed_caching_pass_resumes_where_it_stopped(make_config, image_copy: Path) -> None:
    config = make_config(concepts=[{"path": image_copy, "image_variations": 3}], data={"encode_batch_size": 2})
    killed = Killed()
    with pytest.raises(KeyboardInterrupt):
        _fill(config, image=killed)
    assert killed.encoded == 4, "two calls were written before the kill"
    assert killed.weight is None, "the encoder was released"
    stats, image, _ = _fill(config)
    assert (stats.images_found, stats.images_encoded) == (4, 20)
    assert image.encoded == 20


def test_clear_cache_reencodes_everything(make_config, image_copy: Path) -> None:
    _fill(make_config(concepts=[{"path": image_copy}]))
    stats, _, _ = _fill(make_config(concepts=[{"path": image_copy}], data={"clear_cache": True}))
    assert (stats.images_found, stats.images_encoded) == (0, 8)


def test_other_encoder_identity_misses_but_keeps_old_entries(make_config, image_copy: Path) -> None:
    config = make_config(concepts=[{"path": image_copy}])
    _fill(config)
    stats, _, _ = _fill(config, image=TinyImageEncoder(seed=1))
    assert (stats.images_encoded, stats.pruned) == (8, 0)
    again, _, _ = _fill(config)
    assert again.images_encoded == 0


def test_identical_captions_share_one_text_entry(make_config, shapes_dataset_dir: Path) -> None:
    stats, _, _ = _fill(make_config(concepts=[{"path": shapes_dataset_dir}]))
    assert stats.texts_encoded == 12


def test_cached_batches_equal_encoding_the_uncached_batches(make_config, image_dataset_dir: Path) -> None:
    """With `data.cache: false` the encoders are not run by the loader (the training step encodes on the
    device): its batches carry pixels and captions, which encode to what the cache holds."""
    concepts = [{"path": image_dataset_dir, "image": {"flip": 0.5, "rotation": 5, "brightness": 0.2}}]
    options = {"training": {"batch_size": 1}}
    image_encoder, text_encoder = TinyImageEncoder(), TinyTextEncoder()
    with build_data_loader(
        make_config(concepts=concepts, **options), image_encoder=image_encoder, text_encoder=text_encoder
    ) as cached:
        cached.fill_cache()
        from_cache = list(cached.batches(0))
    unused = TinyImageEncoder(), TinyTextEncoder()
    with build_data_loader(
        make_config(concepts=concepts, data={"cache": False}, **options),
        image_encoder=unused[0],
        text_encoder=unused[1],
    ) as uncached:
        uncached.fill_cache()
        raw = list(uncached.batches(0))
    assert unused[0].calls == unused[1].calls == 0, "the loader encoded nothing"
    assert len(from_cache) == len(raw) == 8
    image_encoder.load()
    text_encoder.load()
    for a, b in zip(from_cache, raw, strict=True):
        assert "latents" not in b
        assert "text_hidden" not in b
        assert a["sample_ids"] == b["sample_ids"]
        assert a["captions"] == b["captions"]
        encoded = {**image_encoder.encode(b["pixels"]), **text_encoder.encode(b["captions"])}
        for key in ("latents", "text_hidden"):
            assert torch.allclose(a[key].float(), encoded[key].float(), atol=1e-6), key
        for key in ("mask", "crop_top_left", "original_size"):
            assert torch.allclose(a[key].float(), b[key].float(), atol=1e-6), key


def test_batches_fill_the_cache_when_the_trainer_did_not(make_config, image_copy: Path) -> None:
    image = TinyImageEncoder()
    with build_data_loader(make_config(concepts=[{"path": image_copy}]), image_encoder=image) as loader:
        batch = next(loader.batches(0))
    assert batch["latents"].shape[1] == 4
    assert "pixels" not in batch
    assert image.encoded == 8


def test_undecodable_image_found_while_caching_is_dropped(make_config, image_copy: Path) -> None:
    data = image_copy.joinpath("img-001.jpg").read_bytes()
    image_copy.joinpath("img-001.jpg").write_bytes(data[: len(data) // 2])
    config = make_config(concepts=[{"path": image_copy}], data={"verify_images": False})
    events = []
    with build_data_loader(config, image_encoder=TinyImageEncoder(), progress=events.append) as loader:
        before = loader.report.samples_per_epoch
        stats = loader.fill_cache()
        trained = {s for batch in loader.batches(0) for s in batch["sample_ids"]}
        assert [item.path.name for item in stats.failed] == ["img-001.jpg"]
        assert loader.report.samples_per_epoch == before - 1
    assert f"{image_copy.name}/img-001.jpg" not in trained
    assert any(event.kind == "warning" and "img-001.jpg" in event.message for event in events)
    strict = make_config(concepts=[{"path": image_copy}], data={"verify_images": False, "strict": True})
    with (
        pytest.raises(UserError, match=r"img-001\.jpg"),
        build_data_loader(strict, image_encoder=TinyImageEncoder()) as loader,
    ):
        loader.fill_cache()


def test_text_variations_cache_distinct_augmented_captions(make_config, image_copy: Path) -> None:
    lines = sum(min(4, len(p.read_text(encoding="utf-8").splitlines())) for p in image_copy.glob("*.txt"))
    assert lines > 8, "some captions have several lines"
    plain, _, _ = _fill(make_config(concepts=[{"path": image_copy, "text_variations": 4}]))
    single, _, _ = _fill(
        make_config(concepts=[{"path": image_copy, "text_variations": 1}]), text=TinyTextEncoder(seed=1)
    )
    assert single.texts_encoded == 8
    # each variant picks one line at random; identical variants share one entry
    assert 8 < plain.texts_encoded <= lines
    varied = {"path": image_copy, "text_variations": 4, "caption": {"random_capitalization": 1.0}}
    stats, _, _ = _fill(make_config(concepts=[varied]), text=TinyTextEncoder(seed=2))
    assert plain.texts_encoded < stats.texts_encoded <= 32
    again, _, _ = _fill(make_config(concepts=[varied]), text=TinyTextEncoder(seed=2))
    assert again.texts_encoded == 0


LEGACY_IMAGE_SETTINGS = {
    "crop_jitter": 1.0,
    "flip": 0.0,
    "rotation": 0.0,
    "brightness": 0.0,
    "contrast": 0.0,
    "saturation": 0.0,
    "hue": 0.0,
    "alpha": "flatten",
    "alpha_background": [255, 255, 255],
    "min_side": 16,
}
"""The image settings in every cache key before mask augmentations existed."""


def test_inactive_mask_augmentations_keep_the_old_cache_keys(make_config, image_copy: Path) -> None:
    plain = make_config(concepts=[{"path": image_copy}])
    with build_data_loader(plain) as loader:
        assert loader.pipeline.image_settings(plain.data.concepts[0]) == LEGACY_IMAGE_SETTINGS
    assert _fill(plain)[0].images_encoded == 8
    unmasked = make_config(concepts=[{"path": image_copy, "image": {"mask_shrink": {"enabled": True}}}])
    masked_off = make_config(concepts=[{"path": image_copy}], loss={"masked": {"enabled": True}})
    for config in (unmasked, masked_off):
        stats = _fill(config)[0]
        assert (stats.images_found, stats.images_encoded) == (8, 0)


def test_active_mask_augmentation_gets_its_own_entries(make_config, image_copy: Path) -> None:
    _fill(make_config(concepts=[{"path": image_copy}]))
    concepts = [{"path": image_copy, "image": {"mask_shrink": {"enabled": True}}}]
    stats = _fill(make_config(concepts=concepts, loss={"masked": {"enabled": True}}))[0]
    assert stats.images_encoded == 8


def test_cached_mask_augmentation_equals_the_uncached_one(make_config, image_dataset_dir: Path) -> None:
    image = {"mask_shrink": {"enabled": True}, "mask_rotate_crop": {"enabled": True}}
    options = {
        "concepts": [{"path": image_dataset_dir, "image": image}],
        "loss": {"masked": {"enabled": True}},
        "training": {"batch_size": 1},
    }
    with build_data_loader(make_config(**options), image_encoder=TinyImageEncoder()) as cached:
        from_cache = list(cached.batches(0))
    with build_data_loader(make_config(**options, data={"cache": False}), image_encoder=TinyImageEncoder()) as uncached:
        raw = list(uncached.batches(0))
    assert len(from_cache) == len(raw) == 8
    encoder = TinyImageEncoder()
    encoder.load()
    for a, b in zip(from_cache, raw, strict=True):
        assert a["sample_ids"] == b["sample_ids"]
        assert torch.allclose(a["latents"], encoder.encode(b["pixels"])["latents"], atol=1e-6)
        assert torch.allclose(a["mask"].float(), b["mask"].float(), atol=1e-6)


def test_a_corrupt_mask_found_while_caching_drops_its_image(
    make_config, image_dataset_dir: Path, tmp_path: Path
) -> None:
    """Not verified up front, the mask fails to decode in the caching pass: its image is dropped (a warning names
    the mask), and the batches hold the others, with every entry they need."""
    folder = Path(shutil.copytree(image_dataset_dir, tmp_path / "images"))
    mask = folder / "img-000-masklabel.png"
    mask.write_bytes(mask.read_bytes()[:40])
    config = make_config(concepts=[{"path": folder}], data={"verify_images": False}, training={"batch_size": 1})
    events: list[Any] = []
    with build_data_loader(
        config, image_encoder=TinyImageEncoder(), text_encoder=TinyTextEncoder(), progress=events.append
    ) as loader:
        loader.fill_cache()
        samples = [sample_id for batch in loader.batches(0) for sample_id in batch["sample_ids"]]
    assert len(samples) == 7
    assert not any(sample.endswith("img-000.png") for sample in samples)
    assert any("img-000-masklabel.png" in (event.message or "") for event in events if event.kind == "warning")


def test_a_caption_entry_shared_with_a_removed_image_stays_for_the_others(make_config, image_copy: Path) -> None:
    """Identical captions share one entry, recorded under one of their images; removing that image leaves an
    entry the others still read."""
    for caption in image_copy.glob("*.txt"):
        caption.write_text("the same caption")
    config = make_config(concepts=[{"path": image_copy}], training={"batch_size": 1})
    first, _, _ = _fill(config)
    assert first.texts_encoded == 1
    for name in ("img-000.png", "img-000.txt", "img-000-masklabel.png"):
        (image_copy / name).unlink()
    with build_data_loader(config, image_encoder=TinyImageEncoder(), text_encoder=TinyTextEncoder()) as loader:
        stats = loader.fill_cache()
        batches = list(loader.batches(0))
    assert (stats.texts_found, stats.texts_encoded, stats.pruned) == (7, 0, 1), "only the removed image's entry"
    assert len(batches) == 7
    assert all("text_hidden" in batch for batch in batches)


def test_a_moved_dataset_keeps_its_entries(make_config, image_copy: Path, tmp_path: Path) -> None:
    """Its entries still match (content, not paths, keys them), so pruning must not delete them as entries of
    files that are gone."""
    _fill(make_config(concepts=[{"path": image_copy}]))
    moved = tmp_path / "moved" / image_copy.name
    moved.parent.mkdir()
    shutil.move(image_copy, moved)
    config = make_config(concepts=[{"path": moved}], training={"batch_size": 1})
    for _ in range(2):
        with build_data_loader(config, image_encoder=TinyImageEncoder(), text_encoder=TinyTextEncoder()) as loader:
            stats = loader.fill_cache()
            assert len(list(loader.batches(0))) == 8
        assert (stats.images_found, stats.images_encoded, stats.pruned) == (8, 0, 0)


def test_entries_another_live_run_uses_are_not_pruned(make_config, image_copy: Path) -> None:
    """A run still training on an image's old content keeps its entry while its lease says so; once its
    process is gone (here: a lease of a pid that no longer exists), the entry is pruned."""
    import json

    from onetrainer.util.atomic import process_tag

    config = make_config(concepts=[{"path": image_copy}])
    with build_data_loader(config, image_encoder=TinyImageEncoder(), text_encoder=TinyTextEncoder()) as first:
        first.fill_cache()
        leases = first.store.root / "leases"
        (lease,) = leases.glob("*.json")
        used = json.loads(lease.read_text())
        lease.rename(leases / "0@elsewhere.json")  # another machine's live run
        Image.new("RGB", (64, 64), (1, 2, 3)).save(image_copy / "img-000.png")
        stats, _, _ = _fill(config)
        assert stats.pruned == 0
        assert all(first.store.has("image", key) or first.store.has("text", key) for key in used)
    gone = f"{2**22 + 12345}@{process_tag().partition('@')[2]}"  # this machine, a pid above Linux's maximum
    (leases / "0@elsewhere.json").rename(leases / f"{gone}.json")
    stats, _, _ = _fill(config)
    assert stats.pruned == 1
    assert not (leases / f"{gone}.json").exists()
    assert list(leases.glob("*.json")) == [], "each run's own lease goes when it closes"


def test_caption_dropout_is_drawn_for_every_use_with_the_text_cache(make_config, image_copy: Path) -> None:
    """Drawn with the cached text variation, caption dropout would leave the same images uncaptioned in every
    epoch (and the others never): it is drawn per use, and the cache holds the empty caption once."""
    config = make_config(concepts=[{"path": image_copy, "caption": {"caption_dropout": 0.5}}])
    stats, _, _ = _fill(config)
    assert stats.texts_encoded == 8 + 1, "each image's caption, and the empty one"
    with build_data_loader(config, image_encoder=TinyImageEncoder(), text_encoder=TinyTextEncoder()) as loader:
        loader.fill_cache()
        epochs = [
            {
                sid: caption
                for batch in loader.batches(epoch)
                for sid, caption in zip(batch["sample_ids"], batch["captions"], strict=True)
            }
            for epoch in range(8)
        ]
    dropped = {sid: [epoch[sid] == "" for epoch in epochs] for sid in epochs[0]}
    assert 0.3 < sum(map(sum, dropped.values())) / (8 * len(dropped)) < 0.7
    varying = sum(0 < sum(uses) < 8 for uses in dropped.values())
    assert varying >= len(dropped) - 1, "an image is dropped in some epochs, not in all or none"
    again, _, _ = _fill(config)
    assert again.texts_encoded == 0


def test_validation_samples_keep_their_captions(make_config, image_copy: Path) -> None:
    concept = {"path": image_copy, "type": "validation", "caption": {"caption_dropout": 1.0}}
    train = {"path": image_copy, "caption": {"caption_dropout": 1.0}}
    with build_data_loader(make_config(concepts=[train, concept])) as loader:
        assert all(caption for _, batch in loader.validation_batches() for caption in batch["captions"])
        assert not any(caption for batch in loader.batches(0) for caption in batch["captions"])


def test_caption_augmentation_fixed_by_the_text_cache_is_warned_about(make_config, image_copy: Path) -> None:
    events: list[Any] = []
    shuffled = {"path": image_copy, "caption": {"shuffle_tags": True}}
    with build_data_loader(make_config(concepts=[shuffled]), progress=events.append) as loader:
        loader.use_encoders(TinyImageEncoder(), TinyTextEncoder())
        cached = [e.message for e in events if e.kind == "warning"]
        loader.use_encoders(TinyImageEncoder(), None)  # (a trained text encoder: no text cache, no warning)
    assert [e.message for e in events if e.kind == "warning"] == cached
    assert len(cached) == 1
    assert "caption.shuffle_tags are drawn once per image" in cached[0]
    varied = {**shuffled, "text_variations": 4}
    events.clear()
    with build_data_loader(make_config(concepts=[varied]), progress=events.append) as loader:
        loader.use_encoders(TinyImageEncoder(), TinyTextEncoder())
    assert not [e for e in events if e.kind == "warning"]
