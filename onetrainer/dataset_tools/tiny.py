"""Tiny random-weight captioning, masking and tagging models, saved in their real on-disk layouts.

Tests and the offline demo need `onetrainer caption` / `mask` to go through the real loading path
(`AutoProcessor`, `from_pretrained`, onnxruntime) without downloading anything. These builders write
folders shaped like `Salesforce/blip-*`, `CIDAS/clipseg-*` and SmilingWolf's WD taggers, with widths
small enough to run in milliseconds. Their text is nonsense; the tagger is wired by hand so its tags
are predictable (see `save_tiny_tagger`).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from onetrainer.util.atomic import atomic_directory, atomic_file, atomic_write_text

T = TypeVar("T")

BLIP_VOCAB = """[PAD]
[UNK]
[CLS]
[SEP]
[MASK]
a
an
the
photo
picture
of
with
and
on
in
cat
dog
red
blue
green
house
tree
car
person
sky
"""
"""The tiny BLIP's WordPiece vocabulary file: BERT's special tokens, then whole words."""
TAGGER_SIZE = 16
TAGGER_TAGS: tuple[tuple[str, int], ...] = (
    ("general", 9),
    ("red_hair", 0),
    ("blue_sky", 0),
    ("hatsune_miku", 4),
    ("^_^", 0),
)
"""(name, category) of the tiny tagger's outputs, in output order."""


def _seeded(seed: int, factory: Callable[[], T]) -> T:
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return factory()


def _small(**extra: object) -> dict[str, object]:
    return {"hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 2, "num_attention_heads": 4, **extra}


def save_tiny_blip(path: str | os.PathLike[str], *, seed: int = 0, overwrite: bool = False) -> Path:
    """A BLIP captioner (32 px images, a 25-word WordPiece vocabulary) as `from_pretrained` reads it."""
    from transformers import BertTokenizer, BlipConfig, BlipForConditionalGeneration, BlipImageProcessor, BlipProcessor

    target = Path(path)
    with atomic_directory(target, overwrite=overwrite) as tmp:
        vocab = tmp / "vocab.txt"
        atomic_write_text(vocab, BLIP_VOCAB)
        tokenizer = BertTokenizer(str(vocab))
        vocab.unlink()
        processor = BlipProcessor(
            image_processor=BlipImageProcessor(size={"height": 32, "width": 32}), tokenizer=tokenizer
        )
        text = _small(
            vocab_size=len(tokenizer),
            max_position_embeddings=128,
            bos_token_id=tokenizer.cls_token_id,
            pad_token_id=tokenizer.pad_token_id,
            sep_token_id=tokenizer.sep_token_id,
            eos_token_id=tokenizer.sep_token_id,
        )
        config = BlipConfig(text_config=text, vision_config=_small(image_size=32, patch_size=8), projection_dim=32)
        model = _seeded(seed, lambda: BlipForConditionalGeneration(config))
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
    return target


def save_tiny_clipseg(path: str | os.PathLike[str], *, seed: int = 0, overwrite: bool = False) -> Path:
    """A CLIPSeg segmenter (32 px images) with the tiny CLIP tokenizer, as `from_pretrained` reads it."""
    from transformers import CLIPSegConfig, CLIPSegForImageSegmentation, CLIPSegProcessor, ViTImageProcessor

    from onetrainer.util.tiny.tokenizer import build_tiny_clip_tokenizer

    tokenizer = build_tiny_clip_tokenizer()
    processor = CLIPSegProcessor(
        image_processor=ViTImageProcessor(
            size={"height": 32, "width": 32}, image_mean=[0.481, 0.458, 0.408], image_std=[0.269, 0.261, 0.276]
        ),
        tokenizer=tokenizer,
    )
    text = _small(
        vocab_size=len(tokenizer),
        max_position_embeddings=tokenizer.model_max_length,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    config = CLIPSegConfig(
        text_config=text,
        vision_config=_small(num_hidden_layers=3, image_size=32, patch_size=8),
        projection_dim=32,
        reduce_dim=16,
        extract_layers=[1, 2],
        decoder_num_attention_heads=2,
        decoder_intermediate_size=37,
    )
    model = _seeded(seed, lambda: CLIPSegForImageSegmentation(config))
    target = Path(path)
    with atomic_directory(target, overwrite=overwrite) as tmp:
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
    return target


def save_tiny_tagger(path: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
    """A WD-style tagger folder (`model.onnx`, `selected_tags.csv`) whose scores are known in advance.

    Input: NHWC BGR 0-255 images of 16x16. Each score is sigmoid(8·channel_mean - 4) or a constant:
    `red_hair` follows red, `blue_sky` blue, the character `hatsune_miku` green; the rating `general`
    is always 0.98 and `^_^` always 0.5. A pure red square therefore scores red_hair 0.982, blue_sky
    and hatsune_miku 0.018. Needs the `onnx` package.
    """
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    # Rows are the input channels in BGR order, columns the tags of TAGGER_TAGS.
    weights = np.array([[0, 0, 8, 0, 0], [0, 0, 0, 8, 0], [0, 8, 0, 0, 0]], dtype=np.float32)
    bias = np.array([4, -4, -4, -4, 0], dtype=np.float32)
    constants = {
        "axes": np.array([1, 2], dtype=np.int64),
        "scale": np.array(255.0, dtype=np.float32),
        "weights": weights,
        "bias": bias,
    }
    graph = helper.make_graph(
        [
            helper.make_node("ReduceMean", ["input_1", "axes"], ["mean"], keepdims=0),
            helper.make_node("Div", ["mean", "scale"], ["unit"]),
            helper.make_node("MatMul", ["unit", "weights"], ["product"]),
            helper.make_node("Add", ["product", "bias"], ["logits"]),
            helper.make_node("Sigmoid", ["logits"], ["predictions_sigmoid"]),
        ],
        "tiny-wd-tagger",
        [helper.make_tensor_value_info("input_1", TensorProto.FLOAT, ["batch", TAGGER_SIZE, TAGGER_SIZE, 3])],
        [helper.make_tensor_value_info("predictions_sigmoid", TensorProto.FLOAT, ["batch", len(TAGGER_TAGS)])],
        initializer=[numpy_helper.from_array(value, name) for name, value in constants.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    target = Path(path)
    with atomic_directory(target, overwrite=overwrite) as tmp:
        with atomic_file(tmp / "model.onnx") as handle:
            handle.write(model.SerializeToString())
        rows = [f"{index},{name},{category},0" for index, (name, category) in enumerate(TAGGER_TAGS)]
        atomic_write_text(tmp / "selected_tags.csv", "tag_id,name,category,count\n" + "\n".join(rows) + "\n")
    return target
