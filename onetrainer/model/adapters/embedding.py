"""Textual-inversion embeddings: new tokens whose input vectors are their own small tensors.

A placeholder of n vectors becomes n tokens (`<p>`, `<p>_1`, ... as diffusers names them) added to the
tokenizer of every text encoder that takes embeddings (one for SD 1.x, two for families with two CLIP
encoders, ...), each with its own [n, width] vectors, as A1111's `clip_l` / `clip_g` files hold them. The
vectors are not rows of the encoders' token tables: the tables keep their shape and state-dict keys
(so a full-model save or a single-file export is unchanged), and a thin lookup in front of each table
substitutes an embedding's vectors wherever its tokens appear. Only those few numbers train.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from onetrainer.util.errors import UserError

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel

    from onetrainer.model.diffusion import DiffusionModel
    from onetrainer.util.family import FamilySpec


@dataclass
class EmbeddingAdapter:
    """One placeholder's tokens and vectors, per text encoder; `parameters` is what trains."""

    placeholder: str
    token_ids: dict[str, list[int]]
    """Text encoder -> the ids of the placeholder's tokens in that encoder's tokenizer."""
    parameters: dict[str, torch.nn.Parameter]
    """Text encoder -> its [n_vectors, width] vectors."""
    trainable: bool = True

    @property
    def count(self) -> int:
        return int(next(iter(self.parameters.values())).shape[0])

    @property
    def tokens(self) -> list[str]:
        return token_names(self.placeholder, self.count)

    def vectors(self) -> dict[str, torch.Tensor]:
        """Text encoder -> its [n_vectors, width] vectors, detached, in float32 on the CPU."""
        return {encoder: param.detach().float().cpu().clone() for encoder, param in self.parameters.items()}

    def named_parameters(self) -> dict[str, torch.nn.Parameter]:
        """Stable names for the optimizer and backups: `<placeholder>/<text encoder>`."""
        return {f"{self.placeholder}/{encoder}": param for encoder, param in self.parameters.items()}


def token_names(placeholder: str, count: int) -> list[str]:
    return [placeholder] + [f"{placeholder}_{index}" for index in range(1, count)]


def expand_placeholders(text: str, embeddings: list[EmbeddingAdapter]) -> str:
    """Write each multi-vector placeholder as its n tokens, so a caption mentions all of its vectors.

    One pass over the text, longest placeholder first, so `<a>` never rewrites part of `<a>b`.
    """
    expansions = {e.placeholder: " ".join(e.tokens) for e in embeddings}
    if not any(e.count > 1 for e in embeddings):
        return text
    pattern = "|".join(re.escape(name) for name in sorted(expansions, key=len, reverse=True))
    return re.sub(pattern, lambda match: expansions[match.group(0)], text)


def on_encoder(embeddings: list[EmbeddingAdapter], encoder: str) -> list[EmbeddingAdapter]:
    """The embeddings with tokens on `encoder`. One without (its file left out an encoder the family can go
    without) reaches that encoder as the placeholder's plain text, unexpanded, as ComfyUI writes it there."""
    return [embedding for embedding in embeddings if encoder in embedding.token_ids]


def _extended_lookup_class() -> type:
    import torch

    class ExtendedTokenEmbedding(torch.nn.Module):
        """The token table plus embedding vectors for ids the table does not hold.

        `weight` is the original table's own Parameter, registered under the same name, so the text
        encoder's state dict is exactly what it was. The embedding vectors are deliberately not
        submodules: they are saved and trained on their own, not as part of the text encoder.
        """

        def __init__(self, table: torch.nn.Embedding) -> None:
            super().__init__()
            self.weight = table.weight
            self.padding_idx = table.padding_idx
            self.entries: list[tuple[list[int], torch.nn.Parameter]] = []

        @property
        def num_embeddings(self) -> int:
            return int(self.weight.shape[0])

        @property
        def embedding_dim(self) -> int:
            return int(self.weight.shape[1])

        def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
            if not self.entries:
                return torch.nn.functional.embedding(input_ids, self.weight, self.padding_idx)
            ids = torch.tensor([i for token_ids, _ in self.entries for i in token_ids], dtype=input_ids.dtype)
            ids = ids.to(input_ids.device, non_blocking=True)  # staged at once, without waiting for the GPU
            vectors = torch.cat([param for _, param in self.entries]).to(self.weight)
            hits = input_ids.unsqueeze(-1) == ids
            found = hits.any(-1)
            base = torch.nn.functional.embedding(torch.where(found, 0, input_ids), self.weight, self.padding_idx)
            return torch.where(found.unsqueeze(-1), hits.to(vectors.dtype) @ vectors, base)

    return ExtendedTokenEmbedding


def _lookup(text_encoder: PreTrainedModel) -> Any:
    """The text encoder's token lookup, replaced once by the extended one."""
    current = text_encoder.get_input_embeddings()
    if type(current).__name__ == "ExtendedTokenEmbedding":
        return current
    extended = _extended_lookup_class()(current)
    text_encoder.set_input_embeddings(extended)
    return extended


def embedding_encoders(model: DiffusionModel) -> list[str]:
    """The text encoders of `model` that take embeddings (those with an A1111 key in the family spec)."""
    return [name for name in model.text_encoder_names() if model.spec.component(name).embedding_key is not None]


def _init_vectors(text_encoder: PreTrainedModel, tokenizer: Any, init_text: str, count: int) -> torch.Tensor:
    """The init text's token vectors stretched (or thinned) over `count`: vector i takes token
    i * tokens // count, as A1111's `create_embedding` does, so a file started from the same text there starts
    from the same vectors here."""
    ids = tokenizer(init_text, add_special_tokens=False).input_ids
    if not ids:
        raise UserError(f"the init text {init_text!r} has no tokens", hint="Use a word, e.g. init_text: person.")
    table = text_encoder.get_input_embeddings().weight
    rows = [ids[index * len(ids) // count] for index in range(count)]
    return table[rows].detach().float().clone()


NAME_HINT = "Pick a placeholder the vocabulary lacks, e.g. one in angle brackets such as <my-cat>."


def _check_placeholder(
    model: DiffusionModel, placeholder: str, tokens: list[str], encoders: list[str], *, where: str | None, hint: str
) -> None:
    """Refuse `placeholder` where a tokenizer already knows one of its `tokens`.

    A token already in the vocabulary keeps its id when added, so the embedding would replace that vocabulary
    entry wherever the tokenizer produces it: a BPE piece such as `cat` inside "catalog" too. diffusers
    refuses such a token as well. Every tokenizer is checked before any changes, so a refusal leaves the
    model as it was.
    """
    for encoder in encoders:
        tokenizer = model.tokenizer_for(encoder)
        vocabulary = tokenizer.get_vocab()  # a new dictionary on every call
        known = [token for token in tokens if token in vocabulary]
        if not known:
            continue
        if known[0] in tokenizer.get_added_vocab() and known[0] not in tokenizer.all_special_tokens:
            raise UserError(
                f"the tokenizer already has a token {known[0]!r}: two embeddings share a placeholder", where=where
            )
        token = "" if known[0] == placeholder else f" (as its token {known[0]!r})"
        raise UserError(
            f"the placeholder {placeholder!r} is already in the vocabulary of the {encoder} tokenizer{token}: "
            "its embedding would replace that token wherever the tokenizer writes it, inside other words too",
            where=where,
            hint=hint,
        )


def add_embedding(
    model: DiffusionModel,
    placeholder: str,
    *,
    count: int = 1,
    init_text: str = "*",
    vectors: Mapping[str, torch.Tensor] | None = None,
    trainable: bool = True,
    where: str | None = None,
    name_hint: str = NAME_HINT,
) -> EmbeddingAdapter:
    """Give `placeholder` its tokens and vectors on every embedding-capable text encoder.

    The vectors come from `vectors` (text encoder -> [n, width], e.g. read from a file), else from the
    token vectors of `init_text`; they are kept in float32. A file may leave out an encoder the family can go
    without (SD 3's T5, in a file trained without it): that encoder then reads the placeholder as plain text,
    as it did in training and as ComfyUI reads it. A refused placeholder's error names `where` (the setting it
    came from) and hints `name_hint`.
    """
    import torch
    from tokenizers import AddedToken

    encoders = embedding_encoders(model)
    if not encoders:
        raise UserError(f"{model.spec.title} models have no text encoder that takes embeddings")
    if vectors is not None:
        _check_vectors(model, placeholder, encoders, vectors)
        encoders = [encoder for encoder in encoders if encoder in vectors]
        count = int(next(iter(vectors.values())).shape[0])
    tokens = token_names(placeholder, count)
    _check_placeholder(model, placeholder, tokens, encoders, where=where, hint=name_hint)
    token_ids: dict[str, list[int]] = {}
    parameters: dict[str, torch.nn.Parameter] = {}
    for encoder in encoders:
        tokenizer, text_encoder = model.tokenizer_for(encoder), model.components[encoder]
        if vectors is not None:
            initial = vectors[encoder].detach().float().clone()
        else:
            initial = _init_vectors(text_encoder, tokenizer, init_text, count)
        # Not normalised: CLIP lowercases text before matching normalised tokens, so `<MyToken>` would never match.
        tokenizer.add_tokens([AddedToken(token, normalized=False) for token in tokens])
        token_ids[encoder] = list(tokenizer.convert_tokens_to_ids(tokens))
        device = text_encoder.get_input_embeddings().weight.device
        parameters[encoder] = torch.nn.Parameter(initial.to(device), requires_grad=trainable)
        _lookup(text_encoder).entries.append((token_ids[encoder], parameters[encoder]))
    return EmbeddingAdapter(placeholder=placeholder, token_ids=token_ids, parameters=parameters, trainable=trainable)


def _check_vectors(
    model: DiffusionModel, placeholder: str, encoders: list[str], vectors: Mapping[str, torch.Tensor]
) -> None:
    counts = {int(tensor.shape[0]) for tensor in vectors.values()}
    needed = [encoder for encoder in encoders if not model.spec.component(encoder).optional]
    missing = [encoder for encoder in needed if encoder not in vectors]
    if missing or len(counts) != 1:
        raise UserError(
            f"the embedding for {placeholder!r} has vectors for {', '.join(sorted(vectors))} but this "
            f"{model.spec.title} model needs the same number of vectors for each of {', '.join(needed)}",
        )
    for encoder in (encoder for encoder in encoders if encoder in vectors):
        width = model.components[encoder].get_input_embeddings().weight.shape[1]
        tensor = vectors[encoder]
        if tensor.ndim != 2 or tensor.shape[1] != width:
            raise UserError(
                f"the embedding for {placeholder!r} has {encoder} vectors of shape {tuple(tensor.shape)}, but "
                f"this model's {encoder} needs [n, {width}]",
                hint="Embeddings are tied to the text-encoder widths of the model family they were trained for.",
            )


def read_embedding_file(path: str | Path, spec: FamilySpec) -> dict[str, torch.Tensor]:
    """Text encoder -> [n, width] vectors of an A1111 (`emb_params`, `clip_l`/`clip_g`, legacy `.pt`) or
    diffusers embedding file, for a model of family `spec`."""
    from onetrainer.model.adapters.files import read_tensor_file
    from onetrainer.util.detect import EMBEDDING, detect_path
    from onetrainer.util.keymaps.embeddings import a1111_to_embedding
    from onetrainer.util.keymaps.engine import KeyMapError

    detection = detect_path(path)
    if detection.kind != EMBEDDING:
        raise UserError(f"{Path(path).name} is not an embedding: it is a {detection.description}", where=str(path))
    if not detection.could_be(spec.name):
        raise UserError(
            f"this embedding is for {detection.family_titles} ({detection.reason}), not for this {spec.title} model",
            where=str(path),
        )
    data, _ = read_tensor_file(path)
    try:
        return {encoder: tensor.float() for encoder, tensor in a1111_to_embedding(data, spec).items()}
    except KeyMapError as error:
        raise UserError(f"not an embedding file: {error.message}", where=str(path), hint=error.hint) from None
