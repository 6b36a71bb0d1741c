"""OneTrainer's enum values and how each maps to ours, as data: read by the importer and the exporter.

Every table maps a OneTrainer enum member (the string its JSON holds) to our config value; the
exporter reads the same tables backwards (`reverse`), so one edit keeps both directions in step.
Members a table lacks are the values we cannot honour. Model types are not here: each family lists
its own in its spec (`FamilySpec.onetrainer_model_types`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, TypeVar

K = TypeVar("K")
V = TypeVar("V")


def reverse(table: Mapping[K, V]) -> dict[V, K]:
    """Our value -> the first OneTrainer value that maps to it (the one `export` writes)."""
    result: dict[V, K] = {}
    for key, value in table.items():
        result.setdefault(value, key)
    return result


CURRENT_VERSION = 11
"""The TrainConfig `__version` this module reads natively and `export` writes."""
CONCEPT_VERSION = 2

DATA_TYPES = (
    "NONE",
    "FLOAT_8",
    "FLOAT_16",
    "FLOAT_32",
    "BFLOAT_16",
    "TFLOAT_32",
    "INT_8",
    "NFLOAT_4",
    "FLOAT_W8A8",
    "INT_W8A8",
    "FLOAT_W8A8_COMPRESSED",
    "INT_W8A8_COMPRESSED",
    "GGUF",
    "GGUF_A8_FLOAT",
    "GGUF_A8_INT",
)
TIME_UNITS = ("EPOCH", "STEP", "SECOND", "MINUTE", "HOUR", "NEVER", "ALWAYS")
OPTIMIZERS = (
    "ADAGRAD",
    "ADAGRAD_8BIT",
    "ADAM",
    "ADAM_8BIT",
    "ADAMW",
    "ADAMW_8BIT",
    "ADAMW_ADV",
    "AdEMAMix",
    "AdEMAMix_8BIT",
    "ADOPT",
    "ADOPT_ADV",
    "LAMB",
    "LAMB_8BIT",
    "LARS",
    "LARS_8BIT",
    "LION",
    "LION_8BIT",
    "LION_ADV",
    "RMSPROP",
    "RMSPROP_8BIT",
    "SGD",
    "SGD_8BIT",
    "SIGNSGD_ADV",
    "SCHEDULE_FREE_ADAMW",
    "SCHEDULE_FREE_SGD",
    "DADAPT_ADA_GRAD",
    "DADAPT_ADAM",
    "DADAPT_ADAN",
    "DADAPT_LION",
    "DADAPT_SGD",
    "PRODIGY",
    "PRODIGY_PLUS_SCHEDULE_FREE",
    "PRODIGY_ADV",
    "ADAFACTOR",
    "CAME",
    "CAME_8BIT",
    "MUON",
    "MUON_ADV",
    "ADAMUON_ADV",
    "ADABELIEF",
    "TIGER",
    "AIDA",
    "YOGI",
)
SCHEDULERS = (
    "CONSTANT",
    "LINEAR",
    "COSINE",
    "COSINE_WITH_RESTARTS",
    "COSINE_WITH_HARD_RESTARTS",
    "REX",
    "ADAFACTOR",
    "CUSTOM",
)
SCALERS = ("NONE", "BATCH", "GLOBAL_BATCH", "GRADIENT_ACCUMULATION", "BOTH", "GLOBAL_BOTH")
DISTRIBUTIONS = ("UNIFORM", "SIGMOID", "LOGIT_NORMAL", "HEAVY_TAIL", "COS_MAP", "INVERTED_PARABOLA", "BETA")
LOSS_WEIGHTS = ("CONSTANT", "P2", "MIN_SNR_GAMMA", "DEBIASED_ESTIMATION", "SIGMA")
NOISE_SCHEDULERS = (
    "DDIM",
    "EULER",
    "EULER_A",
    "DPMPP",
    "DPMPP_SDE",
    "UNIPC",
    "EULER_KARRAS",
    "DPMPP_KARRAS",
    "DPMPP_SDE_KARRAS",
    "UNIPC_KARRAS",
)
MODEL_FORMATS = (
    "DIFFUSERS",
    "ORIGINAL_SINGLE_FILE",
    "ORIGINAL_TRANSFORMER",
    "COMFY_TRANSFORMER",
    "LEGACY_SAFETENSORS",
    "DIFFUSERS_LORA",
    "KOHYA_LORA",
    "ORIGINAL_LORA",
    "COMFY_LORA",
    "LEGACY_LORA",
    "SAFETENSORS",
    "INTERNAL",
)

ENUM_FIELDS: dict[str, tuple[str, ...]] = {
    "training_method": ("FINE_TUNE", "LORA", "EMBEDDING", "FINE_TUNE_VAE"),
    "peft_type": ("LORA", "LOHA", "OFT_2", "LOKR"),
    "train_dtype": DATA_TYPES,
    "fallback_train_dtype": DATA_TYPES,
    "output_dtype": DATA_TYPES,
    "lora_weight_dtype": DATA_TYPES,
    "embedding_weight_dtype": DATA_TYPES,
    "weight_dtype": DATA_TYPES,
    "svd_dtype": DATA_TYPES,
    "validate_after_unit": TIME_UNITS,
    "sample_after_unit": TIME_UNITS,
    "backup_after_unit": TIME_UNITS,
    "save_every_unit": TIME_UNITS,
    "stop_training_after_unit": TIME_UNITS,
    "optimizer": OPTIMIZERS,
    "learning_rate_scheduler": SCHEDULERS,
    "learning_rate_scaler": SCALERS,
    "loss_scaler": SCALERS,
    "timestep_distribution": DISTRIBUTIONS,
    "loss_weight_fn": LOSS_WEIGHTS,
    "ema": ("OFF", "GPU", "CPU"),
    "attention_mechanism": ("SDP", "FLASH", "CUDNN", "FLEX"),
    "gradient_reduce_precision": ("WEIGHT_DTYPE", "FLOAT_32", "WEIGHT_DTYPE_STOCHASTIC", "FLOAT_32_STOCHASTIC"),
    "include_train_config": ("NONE", "SETTINGS", "ALL"),
    "output_model_format": MODEL_FORMATS,
    "sample_image_format": ("PNG", "JPG"),
    "sample_video_format": ("PNG_IMAGE_SEQUENCE", "JPG_IMAGE_SEQUENCE", "MP4"),
    "sample_audio_format": ("MP3",),
    "noise_scheduler": NOISE_SCHEDULERS,
    "balancing_strategy": ("REPEATS", "SAMPLES"),
    "type": ("STANDARD", "VALIDATION", "PRIOR_PREDICTION"),
}
"""OneTrainer enum fields by key name, with every member; any other value is one OneTrainer cannot read."""

METHODS = {"LORA": "lora", "FINE_TUNE": "full", "EMBEDDING": "embedding"}
PRECISIONS = {"FLOAT_32": "fp32", "FLOAT_16": "fp16", "BFLOAT_16": "bf16"}
"""DataType -> our `Precision` (autocast, weight storage, saved dtype)."""
WEIGHT_DTYPES = {**PRECISIONS, "FLOAT_8": "fp8", "INT_8": "int8", "NFLOAT_4": "nf4"}
"""DataType -> our `parts.<name>.weight_dtype`: the precisions, and the weight-only formats of frozen linear layers."""
WEIGHT_ONLY = {"FLOAT_W8A8": "fp8", "FLOAT_W8A8_COMPRESSED": "fp8", "INT_W8A8": "int8", "INT_W8A8_COMPRESSED": "int8"}
"""OneTrainer's W8A8 types quantise the activations too; the nearest of ours keeps only the weights in 8 bits."""
PEFT_TYPES = {"LORA": "lora", "LOHA": "loha", "LOKR": "lokr"}
OPTIMIZER_NAMES = {
    "ADAMW": "adamw",
    "ADAMW_8BIT": "adamw8bit",
    "SGD": "sgd",
    "ADAFACTOR": "adafactor",
    "PRODIGY": "prodigy",
    "SCHEDULE_FREE_ADAMW": "schedulefree_adamw",
    "LION": "lion",
    "CAME": "came",
}
SCHEDULE_FREE_OPTIMIZERS = ("SCHEDULE_FREE_ADAMW", "SCHEDULE_FREE_SGD", "PRODIGY_PLUS_SCHEDULE_FREE")
"""OneTrainer's schedule-free optimizers: it replaces any learning-rate schedule of theirs by CONSTANT."""
SCHEDULER_NAMES = {
    "CONSTANT": "constant",
    "LINEAR": "linear",
    "COSINE": "cosine",
    "COSINE_WITH_HARD_RESTARTS": "cosine_with_restarts",
}
"""OneTrainer's COSINE_WITH_RESTARTS is a cosine wave (the rate climbs back smoothly); our restarts are hard."""
DISTRIBUTION_NAMES = {
    "UNIFORM": "uniform",
    "LOGIT_NORMAL": "logit-normal",
    "SIGMOID": "sigmoid",
    "COS_MAP": "cosmap",
}
LOSS_WEIGHT_NAMES = {"CONSTANT": "none", "MIN_SNR_GAMMA": "min-snr-gamma", "DEBIASED_ESTIMATION": "debiased"}
LOSS_STRENGTHS = {
    "mse_strength": "mse",
    "mae_strength": "l1",
    "huber_strength": "huber",
    "log_cosh_strength": "log-cosh",
}
"""OneTrainer mixes losses by strength; one of them at strength 1 (and the others 0) is our `loss.type`."""
EMA_DEVICES = {"GPU": "train", "CPU": "cpu"}
CADENCE_UNITS = {"EPOCH": "epoch", "STEP": "step", "MINUTE": "minute"}
CADENCE_MINUTES = {"SECOND": 1 / 60, "HOUR": 60.0}
"""Wall-clock units we express in minutes."""
SAMPLERS = {
    "DDIM": "ddim",
    "EULER": "euler",
    "EULER_A": "euler-a",
    "DPMPP": "dpm++2m",
    "DPMPP_KARRAS": "dpm++2m-karras",
    "UNIPC": "unipc",
}
CONCEPT_TYPES = {"STANDARD": "standard", "VALIDATION": "validation", "PRIOR_PREDICTION": "prior"}
CAPTION_SOURCES = {"sample": "sidecar", "filename": "filename", "concept": "concept_file"}
OUTPUT_FORMATS: dict[str, dict[str, str]] = {
    "lora": {"KOHYA_LORA": "kohya", "DIFFUSERS_LORA": "peft", "LEGACY_LORA": "kohya"},
    "full": {"DIFFUSERS": "diffusers", "ORIGINAL_SINGLE_FILE": "single-file", "LEGACY_SAFETENSORS": "single-file"},
    "embedding": {"SAFETENSORS": "a1111"},
}
"""Per method; the exporter writes the first OneTrainer format of each of our formats."""
LEGACY_FORMATS = ("LEGACY_LORA", "LEGACY_SAFETENSORS")
"""OneTrainer's historical per-model layouts: we write the common layout the same tools load."""

NEAREST_OPTIMIZERS = {"adamw8bit_ao": "ADAMW_8BIT"}
"""Optimizers of ours without a OneTrainer twin -> what the exporter writes: the same update, another library."""
FUSED_BACK_PASS_OPTIMIZERS = (
    "ADAFACTOR",
    "CAME",
    "CAME_8BIT",
    "ADAM",
    "ADAMW",
    "ADAMW_ADV",
    "ADOPT_ADV",
    "PRODIGY_PLUS_SCHEDULE_FREE",
    "PRODIGY_ADV",
    "LION_ADV",
    "MUON_ADV",
    "ADAMUON_ADV",
    "SIGNSGD_ADV",
)
"""The OneTrainer optimizers that take `fused_back_pass`."""
STOCHASTIC_ROUNDING_OPTIMIZERS = ("ADAM", "ADAMW", "ADAFACTOR", "ADAMW_ADV", "ADOPT_ADV", "PRODIGY_ADV")
"""The OneTrainer optimizers documented to round bf16 weights stochastically (`stochastic_rounding`)."""
FUSED_KERNELS = ("ADAM", "ADAMW")
"""Their fused back pass and stochastic rounding need `fused` and `foreach` off."""

OPTIMIZER_ARGS: dict[str, dict[str, str]] = {
    "adamw": {"amsgrad": "amsgrad", "maximize": "maximize"},
    "adamw8bit_ao": {"amsgrad": "amsgrad"},
    "adamw8bit": {
        "amsgrad": "amsgrad",
        "optim_bits": "optim_bits",
        "min_8bit_size": "min_8bit_size",
        "is_paged": "is_paged",
    },
    "sgd": {"dampening": "dampening", "nesterov": "nesterov", "maximize": "maximize"},
    "adafactor": {
        "clip_threshold": "clip_threshold",
        "decay_rate": "decay_rate",
        "beta1": "beta1",
        "scale_parameter": "scale_parameter",
    },
    "prodigy": {
        "beta3": "beta3",
        "decouple": "decouple",
        "use_bias_correction": "use_bias_correction",
        "safeguard_warmup": "safeguard_warmup",
        "d0": "d0",
        "d_coef": "d_coef",
        "growth_rate": "growth_rate",
        "slice_p": "slice_p",
    },
    "schedulefree_adamw": {"r": "r", "weight_lr_power": "weight_lr_power"},
    "lion": {},
    "came": {"clip_threshold": "clip_threshold"},
}
"""OneTrainer optimizer fields -> keyword arguments of our optimizer class (`training.optimizer_args`)."""
OPTIMIZER_ARG_DEFAULTS: dict[str, dict[str, Any]] = {
    "adamw": {"amsgrad": False, "maximize": False},
    "adamw8bit_ao": {"amsgrad": False},
    "adamw8bit": {"amsgrad": False, "optim_bits": 32, "min_8bit_size": 4096, "is_paged": False},
    "sgd": {"dampening": 0.0, "nesterov": False, "maximize": False},
    "adafactor": {
        "eps": [1e-30, 1e-3],
        "clip_threshold": 1.0,
        "decay_rate": -0.8,
        "beta1": None,
        "scale_parameter": False,
    },
    "prodigy": {
        "beta3": None,
        "decouple": True,
        "use_bias_correction": False,
        "safeguard_warmup": False,
        "d0": 1e-6,
        "d_coef": 1.0,
        "growth_rate": math.inf,
        "slice_p": 1,
    },
    "schedulefree_adamw": {"r": 0.0, "weight_lr_power": 2.0},
    "lion": {},
    "came": {"eps": [1e-30, 1e-16], "clip_threshold": 1.0},
}
"""What our optimizer uses for each argument of `OPTIMIZER_ARGS` (and the epsilon pair) that the config leaves
out: its library's default, or what our build always passes (Adafactor's scale_parameter false). They can differ
from OneTrainer's (Prodigy's `slice_p`: OneTrainer 11, prodigyopt 1), so the importer sets each OneTrainer
value that differs from ours, and the exporter writes ours for each argument the config leaves out."""
OWN_LEARNING_RATE_REASON = (
    "Adafactor's own learning rate is not supported: onetrainer always sets training.learning_rate, which "
    "Adafactor refuses beside it (the run could not start)"
)
UNSUPPORTED_OPTIMIZER_FIELDS: dict[str, dict[str, str]] = {
    "adafactor": {"relative_step": OWN_LEARNING_RATE_REASON, "warmup_init": OWN_LEARNING_RATE_REASON},
}
"""OneTrainer optimizer fields we cannot honour away from their default (false), per our optimizer, with why."""
BETAS = {"adamw": 2, "adamw8bit": 2, "adamw8bit_ao": 2, "prodigy": 2, "schedulefree_adamw": 2, "lion": 2, "came": 3}
"""How many of beta1, beta2, beta3 make our `training.betas`, per optimizer that takes them."""
SINGLE_EPS = ("adamw", "adamw8bit", "adamw8bit_ao", "prodigy", "schedulefree_adamw")
"""Optimizers whose `eps` is our `training.eps`; Adafactor and CAME take the pair (eps, eps2) as an argument."""
EPS_PAIR = ("adafactor", "came")
IMPLEMENTATION_FIELDS = ("fused", "foreach", "capturable", "differentiable", "compile", "use_triton")
"""Optimizer fields that pick an implementation, not the update: onetrainer chooses kernels itself."""

TOP_LEVEL_REASONS: dict[str, str] = {
    "debug_mode": "debug dumps are not supported",
    "debug_dir": "debug dumps are not supported",
    "huggingface_cache_dir": "set the HF_HOME environment variable instead",
    "offline_mode": "set HF_HUB_OFFLINE=1 instead",
    "continue_last_backup": "use `onetrainer train CONFIG --resume last`",
    "only_cache": "use `onetrainer train CONFIG --cache-only`",
    "multi_gpu": "launch with torchrun for several GPUs; the config does not say it",
    "force_circular_padding": "circular (seamless) padding is not supported",
    "custom_conditioning_image": "inpainting conditioning images are not supported",
    "masked_prior_preservation_weight": "prior preservation outside the mask is not supported",
    "generalized_offset_noise": "generalized offset noise is not supported",
    "learning_rate_scaler": "learning-rate scaling by batch size is not supported; scale training.learning_rate",
    "loss_scaler": "loss scaling by batch size is not supported",
    "fallback_train_dtype": "there is no fallback precision; training.precision applies throughout",
    "enable_autocast_cache": "the autocast cache cannot be switched off",
    "attention_mechanism": "onetrainer uses PyTorch's scaled-dot-product attention",
    "temp_device": "models not in use are unloaded, not moved to another device",
    "lora_weight_dtype": "LoRA weights train in fp32",
    "embedding_weight_dtype": "embeddings train in fp32",
    "preserve_embedding_norm": "embedding norms are not rescaled",
    "save_skip_first": "intermediate saves cannot skip the first intervals",
    "save_filename_prefix": "intermediate saves are named by step",
    "frames": "video models are not supported",
    "text_encoder_sequence_length": "each text encoder uses its tokenizer's length",
    "text_encoder_2_sequence_length": "each text encoder uses its tokenizer's length",
    "backup_before_save": "a backup is written before the final save whenever backups are on",
    "learning_rate_cycles": "cycles must be a whole number for cosine_with_restarts",
}
"""Why a top-level setting we do not support cannot be honoured, when it is not at its default."""
