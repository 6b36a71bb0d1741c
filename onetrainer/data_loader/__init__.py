"""The data loader: concept folders to bucketed, cached batches (our replacement for mgds).

Two layers. The *plan* (`scan`, `buckets`, `plan`) lists files, reads sizes from headers, assigns
buckets, applies repeats and builds the exact batches of every epoch from (seed, epoch) alone. The
*materialise* layer (`graph`, `nodes_image`, `nodes_mask`, `nodes_text`, `pipeline`, `batches`,
`pool`) turns a planned batch into tensors in a thread pool, reading encoder outputs from a
content-keyed disk cache (`cache`, `caching`) when it can.

API for the trainer and commands:

* `build_data_loader(config, *, image_encoder=None, text_encoder=None, cache_dir=None, rank=0,
  world_size=1, workers=None, quantisation=8, progress=ignore_events, pin_memory=False) -> DataLoader`
  (`quantisation`: the family's bucket step, e.g. 8 where the VAE downsamples by 8 and the denoiser
  takes every latent size; `cache_dir` defaults to `data.cache_dir`, else
  `<workspace>/cache`; `pin_memory`: batches in page-locked memory, for a CUDA device). Raises
  `ConfigError` for a missing concept folder and `UserError` (exit 2)
  when nothing would train, or under `data.strict` when any image is skipped.
* `DataLoader.fill_cache() -> CacheStats`: the caching pass (call before training; on multi-GPU,
  on rank 0 first, then the others after a barrier: they re-read the file records and the manifest,
  and only find the entries). A no-op without encoders or with `data.cache: false`. Undecodable
  images found here are dropped from the plan.
* `DataLoader.steps_per_epoch` (exact for epoch 0 and, unless `epochs_vary`, for every epoch),
  `steps_in_epoch(epoch)`, `total_steps(epochs)`.
* `DataLoader.batches(epoch, start=None)`: this rank's batches; `start` defaults to 0, or to the
  position from `load_state_dict`. `state_dict()` / `load_state_dict()` hold {"epoch", "position"}.
* `DataLoader.validation_batches(every_rank=False)`: each validation-concept sample once (not in
  training batches), this rank's share (all of them with `every_rank`), as (batch number, batch).
* `DataLoader.report` / `dataset_report(config, *, quantisation=8, world_size=1, cache_dir=None)
  -> DatasetReport` (writes nothing): `to_dict()`, `to_text()`, rich-renderable,
  `require_trainable()` raises the exit-2 `UserError` listing why nothing would train.
* `DataLoader.describe()`: the validated per-sample graphs, printed one node per line. With masked
  training (`loss.masked.enabled`) and a concept enabling `image.mask_shrink` or
  `image.mask_rotate_crop`, the image graph gains the `mask_shrink` and `mask_rotate_crop` nodes
  before `resize_crop`; otherwise it is unchanged (and so are cache keys).
* Encoders implement `encoders.ImageEncoder` / `encoders.TextEncoder`; `tiny` has reference ones.
* `placeholders.check_placeholders(config)` raises the exit-2 `ConfigError` when a trained
  embedding's placeholder is in no caption of a concept that would train it (reads caption text
  only, through `captions.caption_lines`, the caption node's own source rule).
* Progress and warnings arrive as `events.LoaderEvent` through the `progress` callback.

A batch is a dict: `latents` (the image encoder's outputs) or `pixels` [B,3,H,W] in [-1, 1];
`mask` float [B,1,H,W] in [0, 1] at pixel resolution; `captions` list[str]; the text encoder's
outputs when given; `loss_weight` float [B]; `is_prior` bool [B]; `sample_ids` list[str];
`original_size`, `crop_top_left`, `target_size` long [B,2] as (h, w).
"""

from onetrainer.data_loader.caching import CacheStats
from onetrainer.data_loader.encoders import ImageEncoder, TextEncoder
from onetrainer.data_loader.events import LoaderEvent, ProgressCallback
from onetrainer.data_loader.loader import DataLoader, build_data_loader, dataset_report
from onetrainer.data_loader.report import DatasetReport

__all__ = [
    "CacheStats",
    "DataLoader",
    "DatasetReport",
    "ImageEncoder",
    "LoaderEvent",
    "ProgressCallback",
    "TextEncoder",
    "build_data_loader",
    "dataset_report",
]
