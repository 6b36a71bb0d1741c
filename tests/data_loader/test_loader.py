"""The loader end to end: determinism whatever the workers, repeats, exact epochs, resume, ranks, errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from onetrainer.data_loader import build_data_loader
from onetrainer.util.errors import UserError

AUGMENTED = {"flip": 0.5, "rotation": 10, "brightness": 0.2, "contrast": 0.2, "saturation": 0.2, "hue": 0.05}


def _epoch(loader, epoch: int = 0) -> list[dict[str, Any]]:
    return list(loader.batches(epoch))


def _assert_same(first: list[dict[str, Any]], second: list[dict[str, Any]]) -> None:
    assert len(first) == len(second)
    for a, b in zip(first, second, strict=True):
        assert a.keys() == b.keys()
        for key, value in a.items():
            if isinstance(value, torch.Tensor):
                assert torch.equal(value, b[key]), key
            else:
                assert value == b[key], key


def test_same_seed_same_batches_whatever_the_worker_count(make_config, image_dataset_dir: Path) -> None:
    config = make_config(concepts=[{"path": image_dataset_dir, "repeats": 2, "image": AUGMENTED}])
    runs = []
    for workers in (0, 1, 3):
        with build_data_loader(config, workers=workers) as loader:
            runs.append(_epoch(loader, 1))
    _assert_same(runs[0], runs[1])
    _assert_same(runs[0], runs[2])


def test_other_seed_gives_other_batches(make_config, image_dataset_dir: Path) -> None:
    concepts = [{"path": image_dataset_dir, "image": AUGMENTED}]
    with build_data_loader(make_config(concepts=concepts, training={"seed": 1})) as one:
        first = _epoch(one)
    with build_data_loader(make_config(concepts=concepts, training={"seed": 2})) as two:
        second = _epoch(two)
    assert [b["sample_ids"] for b in first] != [b["sample_ids"] for b in second]


def test_repeats_get_distinct_augmentations(make_config, shapes_dataset_dir: Path) -> None:
    config = make_config(concepts=[{"path": shapes_dataset_dir, "repeats": 3, "image": AUGMENTED}])
    seen: dict[str, list[torch.Tensor]] = {}
    with build_data_loader(config) as loader:
        for batch in loader.batches(0):
            for sample_id, pixels in zip(batch["sample_ids"], batch["pixels"], strict=True):
                seen.setdefault(sample_id, []).append(pixels)
    assert len(seen) == 16
    for uses in seen.values():
        assert len(uses) == 3
        assert not any(torch.equal(uses[i], uses[j]) for i in range(3) for j in range(i + 1, 3))


@pytest.mark.parametrize("concept", [{"repeats": 1}, {"repeats": 0.5}, {"samples": 5}, {"repeats": 1.5}])
def test_every_batch_is_one_resolution_and_the_epoch_length_is_exact(make_config, image_dataset_dir, concept) -> None:
    config = make_config(concepts=[{"path": image_dataset_dir, **concept}], training={"batch_size": 3})
    with build_data_loader(config) as loader:
        for epoch in range(3):
            batches = _epoch(loader, epoch)
            assert len(batches) == loader.steps_in_epoch(epoch)
            for batch in batches:
                assert batch["pixels"].shape[0] == 3
                assert batch["mask"].shape[-2:] == batch["pixels"].shape[-2:]
                assert (batch["target_size"] == torch.tensor(batch["pixels"].shape[-2:])).all()
        assert loader.total_steps(3) == sum(loader.steps_in_epoch(e) for e in range(3))


def test_mid_epoch_resume_yields_exactly_the_remaining_batches(make_config, image_dataset_dir: Path) -> None:
    config = make_config(concepts=[{"path": image_dataset_dir, "repeats": 2, "image": AUGMENTED}])
    with build_data_loader(config) as loader:
        full = _epoch(loader, 1)
    with build_data_loader(config) as interrupted:
        iterator = interrupted.batches(1)
        head = [next(iterator) for _ in range(3)]
        state = interrupted.state_dict()
        iterator.close()
    assert state == {"epoch": 1, "position": 3}
    with build_data_loader(config, workers=2) as resumed:
        resumed.load_state_dict(state)
        tail = list(resumed.batches(1))
    _assert_same(head + tail, full)


def test_resume_position_outside_the_epoch_is_refused(make_config, image_dataset_dir: Path) -> None:
    with build_data_loader(make_config(concepts=[{"path": image_dataset_dir}])) as loader:
        loader.load_state_dict({"epoch": 0, "position": 999})
        with pytest.raises(UserError, match="outside epoch 0"):
            next(loader.batches(0))


def test_batch_contract(make_config, image_dataset_dir: Path) -> None:
    concepts = [{"path": image_dataset_dir, "loss_weight": 0.5, "type": "prior"}]
    with build_data_loader(make_config(concepts=concepts)) as loader:
        batch = next(loader.batches(0))
    assert batch["pixels"].dtype == torch.float32
    assert batch["pixels"].min() >= -1
    assert batch["mask"].dtype == torch.float32
    assert 0 <= batch["mask"].min() <= batch["mask"].max() <= 1
    assert batch["loss_weight"].tolist() == [0.5, 0.5]
    assert batch["is_prior"].tolist() == [True, True]
    for key in ("original_size", "crop_top_left", "target_size"):
        assert batch[key].dtype == torch.long
        assert batch[key].shape == (2, 2)
    assert all(isinstance(caption, str) for caption in batch["captions"])
    assert len(batch["sample_ids"]) == 2


def test_images_without_mask_files_get_all_ones(make_config, image_dataset_dir: Path) -> None:
    with build_data_loader(make_config(concepts=[{"path": image_dataset_dir}])) as loader:
        for batch in loader.batches(0):
            for sample_id, mask in zip(batch["sample_ids"], batch["mask"], strict=True):
                index = int(sample_id.split("img-")[1][:3])
                assert (mask.min() == 1) == (index % 2 == 1), sample_id


def test_validation_concepts_come_only_from_their_own_iterator(make_config, image_dataset_dir, shapes_dataset_dir):
    concepts = [{"path": image_dataset_dir}, {"path": shapes_dataset_dir, "type": "validation", "name": "val"}]
    with build_data_loader(make_config(concepts=concepts)) as loader:
        trained = {sample for batch in loader.batches(0) for sample in batch["sample_ids"]}
        validated = [sample for _, batch in loader.validation_batches() for sample in batch["sample_ids"]]
        again = [sample for _, batch in loader.validation_batches() for sample in batch["sample_ids"]]
    assert not any(sample.startswith("val/") for sample in trained)
    assert sorted(validated) == sorted(f"val/shape-{i:03d}.png" for i in range(16))
    assert validated == again


def test_ranks_share_the_bucket_and_split_the_samples(make_config, image_dataset_dir: Path) -> None:
    config = make_config(concepts=[{"path": image_dataset_dir, "repeats": 3}])
    ranks = []
    for rank in (0, 1):
        with build_data_loader(config, rank=rank, world_size=2) as loader:
            ranks.append(_epoch(loader))
    assert len(ranks[0]) == len(ranks[1]) > 0
    for first, second in zip(*ranks, strict=True):
        assert torch.equal(first["target_size"], second["target_size"])


def test_odd_images_train_or_are_reported(make_config, odd_image_dataset_dir: Path) -> None:
    events = []
    config = make_config(concepts=[{"path": odd_image_dataset_dir, "image": {"alpha": "mask"}}])
    with build_data_loader(config, progress=events.append) as loader:
        trained = {sample for batch in loader.batches(0) for sample in batch["sample_ids"]}
        skipped = {Path(item["path"]).name for item in loader.report.skipped}
    assert len(trained) == 15
    assert skipped == {"odd-empty.png", "odd-truncated.png", "odd-strip-1x4000.png"}
    assert sum(event.kind == "warning" for event in events) == 3


def test_strict_makes_skipped_images_an_error(make_config, odd_image_dataset_dir: Path) -> None:
    config = make_config(concepts=[{"path": odd_image_dataset_dir}], data={"strict": True})
    with pytest.raises(UserError, match=r"3 image\(s\) cannot be used") as info:
        build_data_loader(config)
    assert "odd-empty.png" in info.value.message
    assert info.value.exit_code == 2


def test_nothing_to_train_is_exit_2_with_counted_reasons(make_config, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "a.png").write_bytes(b"")
    (broken / "b.png").write_bytes(b"")
    (broken / "c.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(UserError) as info:
        build_data_loader(make_config(concepts=[{"path": broken}]))
    assert info.value.exit_code == 2
    assert "2 image(s) skipped: empty file" in info.value.message
    assert "1 image(s) skipped: not an image format Pillow can read" in info.value.message


def test_sdxl_quantisation_gives_buckets_in_multiples_of_64(make_config, image_dataset_dir: Path) -> None:
    config = make_config(concepts=[{"path": image_dataset_dir}], data={"resolution": 128})
    with build_data_loader(config, quantisation=64) as loader:
        sizes = {tuple(batch["target_size"][0].tolist()) for batch in loader.batches(0)}
    assert sizes
    assert all(side % 64 == 0 for size in sizes for side in size)


def test_consecutive_epochs_from_one_loader_equal_fresh_loaders(make_config, image_dataset_dir: Path) -> None:
    config = make_config(concepts=[{"path": image_dataset_dir, "image": AUGMENTED}], data={"workers": 2})
    with build_data_loader(config) as loader:
        streamed = [_epoch(loader, epoch) for epoch in range(3)]
    for epoch in range(3):
        with build_data_loader(config) as fresh:
            _assert_same(streamed[epoch], _epoch(fresh, epoch))


MASK_AUGMENTED = {
    **AUGMENTED,
    "mask_shrink": {"enabled": True},
    "mask_rotate_crop": {"enabled": True, "rotation": 15},
}
MASKED_LOSS = {"masked": {"enabled": True}}


def _masks_by_sample(batches: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    return {i: mask for b in batches for i, mask in zip(b["sample_ids"], b["mask"], strict=True)}


def test_mask_augmented_batches_depend_on_the_seed_not_the_workers(make_config, image_dataset_dir: Path) -> None:
    config = make_config(concepts=[{"path": image_dataset_dir, "image": MASK_AUGMENTED}], loss=MASKED_LOSS)
    runs = []
    for workers in (0, 2):
        with build_data_loader(config, workers=workers) as loader:
            runs.append([_epoch(loader, 0), _epoch(loader, 1)])
    _assert_same(runs[0][0], runs[1][0])
    _assert_same(runs[0][1], runs[1][1])
    first, second = _masks_by_sample(runs[0][0]), _masks_by_sample(runs[0][1])
    masked = [i for i in first if int(i.split("img-")[1][:3]) % 2 == 0]
    assert masked
    assert all(not torch.equal(first[i], second[i]) for i in masked), "each epoch shrinks and crops anew"


def test_describe_lists_the_mask_nodes_only_when_they_act(make_config, image_dataset_dir: Path) -> None:
    def described(image: dict[str, Any], loss: dict[str, Any] | None) -> tuple[str, list[str]]:
        warnings: list[str] = []

        def collect(event) -> None:
            if event.kind == "warning":
                warnings.append(event.message)

        config = make_config(concepts=[{"path": image_dataset_dir, "image": image}], loss=loss)
        with build_data_loader(config, progress=collect) as loader:
            return loader.describe(), warnings

    text, warnings = described(MASK_AUGMENTED, MASKED_LOSS)
    assert "mask_shrink" in text
    assert "mask_rotate_crop" in text
    assert not warnings
    text, _ = described(AUGMENTED, MASKED_LOSS)
    assert "mask_shrink" not in text
    text, warnings = described(MASK_AUGMENTED, None)
    assert "mask_shrink" not in text
    assert len(warnings) == 1
    assert "image.mask_shrink and image.mask_rotate_crop only act with masked training" in warnings[0]


def test_batches_for_a_gpu_have_every_tensor_pinned_by_the_workers(
    make_config, image_dataset_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import threading

    pinned: dict[int, str] = {}

    def pin(self: torch.Tensor) -> torch.Tensor:  # this torch has no CUDA to pin for: record instead
        copy = self.clone()
        pinned[id(copy)] = threading.current_thread().name
        return copy

    monkeypatch.setattr(torch.Tensor, "pin_memory", pin)
    config = make_config(concepts=[{"path": image_dataset_dir}])
    with build_data_loader(config, workers=2) as loader:
        plain = _epoch(loader)
    assert pinned == {}
    with build_data_loader(config, workers=2, pin_memory=True) as loader:
        batches = _epoch(loader)
        _assert_same(plain, batches)
        tensors = [value for batch in batches for value in batch.values() if isinstance(value, torch.Tensor)]
        assert all(id(tensor) in pinned for tensor in tensors)
        assert threading.main_thread().name not in {pinned[id(tensor)] for tensor in tensors}


@pytest.mark.gpu
def test_batches_for_a_gpu_are_in_page_locked_memory(make_config, image_dataset_dir: Path) -> None:
    with build_data_loader(make_config(concepts=[{"path": image_dataset_dir}]), pin_memory=True) as loader:
        batch = next(iter(loader.batches(0)))
    assert all(value.is_pinned() for value in batch.values() if isinstance(value, torch.Tensor))
