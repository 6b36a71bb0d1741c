"""Tiny random-weight captioning, masking and tagging models, saved in their real on-disk layouts.

Tests and the offline demo need `onetrainer caption` / `mask` to go through the real loading path
(`AutoProcessor`, `from_pretrained`, onnxruntime) without downloading anything. These builders write
folders shaped like `Salesforce/blip-*`, `Salesforce/blip2-opt-*`, `florence-community/Florence-2-*`,
`CIDAS/clipseg-*` and SmilingWolf's WD taggers, with widths small enough to run in milliseconds.
Their text is nonsense; the tagger is wired by hand so its tags are predictable (see
`save_tiny_tagger`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

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
BYTE_LEVEL_WORDS: tuple[str, ...] = tuple(BLIP_VOCAB.split()[5:])
"""Words the tiny byte-level BPE tokenizers (BLIP-2's OPT, Florence-2's BART) hold as single tokens."""
IMAGE_TOKEN = "<image>"
CAPTIONER_INIT_STD = 0.1
"""Weight std of the tiny BLIP-2 and Florence-2. At the usual 0.02 (and 1e-10 for BLIP-2's vision
tower) the image barely reaches the text and a tied language model repeats its start token, which
for both is the end token: every caption would be empty. With 0.1 and untied output embeddings each
image gets its own non-empty nonsense."""
"""The placeholder BLIP-2's and Florence-2's processors repeat where the image features go."""
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


def _save_pretrained(path: str | os.PathLike[str], overwrite: bool, *parts: Any) -> Path:
    """Write a model and its processor into one folder that appears whole or not at all."""
    target = Path(path)
    with atomic_directory(target, overwrite=overwrite) as tmp:
        for part in parts:
            part.save_pretrained(tmp)
    return target


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


def byte_level_vocab(specials: Sequence[str]) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """(vocab, merges) of a tiny GPT-2-style byte-level BPE, laid out as OPT's and BART's are.

    Ids run: `specials` (so `<s>`, `<pad>`, `</s>`, `<unk>` get OPT's and BART's ids 0-3), printable
    ASCII, `Ġ` (byte-level BPE's stand-in for a space), then one token `Ġword` per entry of
    `BYTE_LEVEL_WORDS`, each reached by a chain of merges (`Ġ`+`c`, `Ġc`+`a`, `Ġca`+`t`). Any ASCII
    text encodes, and a random model can only decode to printable text.
    """
    space = "\u0120"
    tokens = [*specials, *(chr(code) for code in range(ord("!"), ord("~") + 1)), space]
    merges: list[tuple[str, str]] = []
    for word in BYTE_LEVEL_WORDS:
        piece = space
        for char in word:
            if (piece, char) not in merges:
                merges.append((piece, char))
                tokens.append(piece + char)
            piece += char
    return {token: index for index, token in enumerate(dict.fromkeys(tokens))}, merges


def save_tiny_blip2(path: str | os.PathLike[str], *, seed: int = 0, overwrite: bool = False) -> Path:
    """A BLIP-2 captioner with an OPT language model, as `from_pretrained` reads it.

    32 px images and 8 query tokens. As in `Salesforce/blip2-opt-2.7b`, the tokenizer is byte-level BPE
    (`byte_level_vocab`) that starts text with `</s>`, and the processor adds an `<image>` token and
    puts one per query token before the prompt.
    """
    from transformers import (
        Blip2Config,
        Blip2ForConditionalGeneration,
        Blip2Processor,
        BlipImageProcessor,
        GPT2Tokenizer,
    )

    vocab, merges = byte_level_vocab(["<s>", "<pad>", "</s>", "<unk>"])
    tokenizer = GPT2Tokenizer(
        vocab=vocab,
        merges=merges,
        bos_token="</s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        add_bos_token=True,
    )
    query_tokens = 8
    processor = Blip2Processor(
        image_processor=BlipImageProcessor(size={"height": 32, "width": 32}),
        tokenizer=tokenizer,
        num_query_tokens=query_tokens,
    )
    text = {
        "model_type": "opt",
        "vocab_size": len(tokenizer),
        "hidden_size": 32,
        "word_embed_proj_dim": 32,
        "ffn_dim": 37,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "max_position_embeddings": 256,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
        "tie_word_embeddings": False,
        "init_std": CAPTIONER_INIT_STD,
    }
    config = Blip2Config(
        vision_config=_small(image_size=32, patch_size=8, initializer_range=CAPTIONER_INIT_STD),
        qformer_config=_small(encoder_hidden_size=32, vocab_size=len(tokenizer)),
        text_config=text,
        num_query_tokens=query_tokens,
        image_token_index=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        initializer_range=CAPTIONER_INIT_STD,
    )
    model = _seeded(seed, lambda: Blip2ForConditionalGeneration(config))
    return _save_pretrained(path, overwrite, model, processor)


def save_tiny_florence2(path: str | os.PathLike[str], *, seed: int = 0, overwrite: bool = False) -> Path:
    """A Florence-2 captioner (DaViT vision tower, BART text model), as `from_pretrained` reads it.

    The two-stage vision tower (strides 4 and 2) turns 32 px images into a 4x4 grid, plus one pooled
    token: 17 `<image>` tokens, which the processor's `image_seq_length` must match. The tokenizer is
    `byte_level_vocab`'s, as BART's is byte-level BPE; the processor turns task tokens such as
    `<DETAILED_CAPTION>` into their questions.
    """
    from transformers import (
        BartTokenizer,
        CLIPImageProcessorPil,
        Florence2Config,
        Florence2ForConditionalGeneration,
        Florence2Processor,
    )

    vocab, merges = byte_level_vocab(["<s>", "<pad>", "</s>", "<unk>", "<mask>", IMAGE_TOKEN])
    tokenizer = BartTokenizer(vocab=vocab, merges=merges, extra_special_tokens={"image_token": IMAGE_TOKEN})
    image_processor = CLIPImageProcessorPil(
        size={"height": 32, "width": 32},
        do_center_crop=False,
        image_mean=[0.485, 0.456, 0.406],
        image_std=[0.229, 0.224, 0.225],
        image_seq_length=(32 // (4 * 2)) ** 2 + 1,
    )
    processor = Florence2Processor(image_processor=image_processor, tokenizer=tokenizer)
    text = {
        "model_type": "bart",
        "vocab_size": len(tokenizer),
        "d_model": 32,
        "encoder_layers": 2,
        "decoder_layers": 2,
        "encoder_attention_heads": 4,
        "decoder_attention_heads": 4,
        "encoder_ffn_dim": 37,
        "decoder_ffn_dim": 37,
        "max_position_embeddings": 256,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
        "decoder_start_token_id": tokenizer.eos_token_id,
        "forced_eos_token_id": tokenizer.eos_token_id,
        "init_std": CAPTIONER_INIT_STD,
    }
    vision = {
        "depths": [1, 1],
        "patch_size": [7, 3],
        "patch_stride": [4, 2],
        "patch_padding": [3, 1],
        "patch_prenorm": [False, True],
        "embed_dim": [16, 32],
        "num_heads": [2, 4],
        "num_groups": [2, 4],
        "window_size": 4,
        "drop_path_rate": 0.0,
        "projection_dim": 32,
    }
    config = Florence2Config(
        text_config=text,
        vision_config=vision,
        image_token_id=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        tie_word_embeddings=False,
        initializer_range=CAPTIONER_INIT_STD,
    )
    model = _seeded(seed, lambda: Florence2ForConditionalGeneration(config))
    return _save_pretrained(path, overwrite, model, processor)


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
    return _save_pretrained(path, overwrite, model, processor)


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
    constants: dict[str, np.ndarray] = {
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
