"""Textual-inversion embeddings: new tokens whose input vectors are their own small tensors.

A placeholder of n vectors becomes n tokens (`<p>`, `<p>_1`, ... as diffusers names them) added to
the tokenizer. Their vectors are not rows of the text encoder's embedding table: the table keeps its
shape and state-dict keys (so a full-model save or a single-file export is unchanged), and a thin
lookup in front of it substitutes each embedding's tensor wherever its tokens appear. Only those
few numbers train, and they reach the optimizer as one tensor per embedding.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from onetrainer.util.errors import UserError

if TYPE_CHECKING:
    import torch
    from transformers import CLIPTokenizer

    from onetrainer.model.stable_diffusion import StableDiffusionModel


@dataclass
class EmbeddingAdapter:
    """One placeholder's tokens and vectors; `parameter` is what trains."""

    placeholder: str
    token_ids: list[int]
    parameter: torch.nn.Parameter

    @property
    def tokens(self) -> list[str]:
        return token_names(self.placeholder, len(self.token_ids))

    def vectors(self, model: StableDiffusionModel | None = None) -> torch.Tensor:
        """The [n_vectors, width] vectors, detached, in float32 on the CPU."""
        return self.parameter.detach().float().cpu().clone()


def token_names(placeholder: str, count: int) -> list[str]:
    return [placeholder] + [f"{placeholder}_{index}" for index in range(1, count)]


def expand_placeholders(text: str, embeddings: list[EmbeddingAdapter]) -> str:
    """Write each multi-vector placeholder as its n tokens, so a caption mentions all of its vectors.

    One pass over the text, longest placeholder first, so `<a>` never rewrites part of `<a>b`.
    """
    expansions = {e.placeholder: " ".join(e.tokens) for e in embeddings}
    if not any(len(e.token_ids) > 1 for e in embeddings):
        return text
    pattern = "|".join(re.escape(name) for name in sorted(expansions, key=len, reverse=True))
    return re.sub(pattern, lambda match: expansions[match.group(0)], text)


def _extended_lookup_class() -> type:
    import torch

    class ExtendedTokenEmbedding(torch.nn.Module):
        """The token table plus embedding vectors for ids the table does not hold.

        `weight` is the original table's own Parameter, registered under the same name, so the text
        encoder's state dict is exactly what it was. The embeddings are deliberately not submodules:
        they are saved and trained on their own, not as part of the text encoder.
        """

        def __init__(self, table: torch.nn.Embedding) -> None:
            super().__init__()
            self.weight = table.weight
            self.padding_idx = table.padding_idx
            self.embeddings: list[EmbeddingAdapter] = []

        @property
        def num_embeddings(self) -> int:
            return int(self.weight.shape[0])

        @property
        def embedding_dim(self) -> int:
            return int(self.weight.shape[1])

        def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
            if not self.embeddings:
                return torch.nn.functional.embedding(input_ids, self.weight, self.padding_idx)
            ids = torch.tensor(
                [i for e in self.embeddings for i in e.token_ids], device=input_ids.device, dtype=input_ids.dtype
            )
            vectors = torch.cat([e.parameter for e in self.embeddings]).to(self.weight)
            hits = input_ids.unsqueeze(-1) == ids
            found = hits.any(-1)
            base = torch.nn.functional.embedding(torch.where(found, 0, input_ids), self.weight, self.padding_idx)
            return torch.where(found.unsqueeze(-1), hits.to(vectors.dtype) @ vectors, base)

    return ExtendedTokenEmbedding


def _lookup(text_encoder: torch.nn.Module) -> torch.nn.Module:
    """The text encoder's token lookup, replaced once by the extended one."""
    current = text_encoder.get_input_embeddings()
    if type(current).__name__ == "ExtendedTokenEmbedding":
        return current
    extended = _extended_lookup_class()(current)
    text_encoder.set_input_embeddings(extended)
    return extended


def _init_vectors(text_encoder: torch.nn.Module, tokenizer: CLIPTokenizer, init_text: str, count: int) -> torch.Tensor:
    """The init text's token vectors, repeated or cut to `count` (A1111's rule)."""
    ids = tokenizer(init_text, add_special_tokens=False).input_ids
    if not ids:
        raise UserError(f"the init text {init_text!r} has no tokens", hint="Use a word, e.g. init_text: person.")
    table = text_encoder.get_input_embeddings().weight
    rows = [ids[index % len(ids)] for index in range(count)]
    return table[rows].detach().float().clone()


def add_embedding(
    model: StableDiffusionModel,
    placeholder: str,
    *,
    count: int = 1,
    init_text: str = "*",
    vectors: torch.Tensor | None = None,
    trainable: bool = True,
) -> EmbeddingAdapter:
    """Give `placeholder` its tokens and vectors (from `vectors`, else from `init_text`), in float32."""
    import torch
    from tokenizers import AddedToken

    tokenizer, text_encoder = model.tokenizer, model.text_encoder
    width = text_encoder.get_input_embeddings().weight.shape[1]
    if vectors is not None:
        if vectors.ndim != 2 or vectors.shape[1] != width:
            raise UserError(
                f"the embedding for {placeholder!r} has vectors of shape {tuple(vectors.shape)}, but this "
                f"text encoder needs [n, {width}]",
                hint="Embeddings are tied to the text-encoder width: 768 for SD 1.x, 1024 for SD 2.x.",
            )
        count = int(vectors.shape[0])
    tokens = token_names(placeholder, count)
    taken = [token for token in tokens if token in tokenizer.get_added_vocab()]
    if taken:
        raise UserError(f"the tokenizer already has a token {taken[0]!r}: two embeddings share a placeholder")
    initial = vectors.detach().float().clone() if vectors is not None else None
    if initial is None:
        initial = _init_vectors(text_encoder, tokenizer, init_text, count)
    # Not normalised: CLIP lowercases text before matching normalised tokens, so `<MyToken>` would never match.
    tokenizer.add_tokens([AddedToken(token, normalized=False) for token in tokens])
    token_ids = tokenizer.convert_tokens_to_ids(tokens)
    device = text_encoder.get_input_embeddings().weight.device
    parameter = torch.nn.Parameter(initial.to(device), requires_grad=trainable)
    embedding = EmbeddingAdapter(placeholder=placeholder, token_ids=list(token_ids), parameter=parameter)
    _lookup(text_encoder).embeddings.append(embedding)
    return embedding


def read_embedding_file(path: str | Path, family: str) -> torch.Tensor:
    """The [n, width] vectors of an A1111 (`emb_params`, legacy `.pt`) or diffusers embedding file."""
    from onetrainer.model.adapters.files import read_tensor_file
    from onetrainer.util.detect import EMBEDDING, detect_path
    from onetrainer.util.keymaps.embeddings import a1111_to_embedding
    from onetrainer.util.keymaps.engine import KeyMapError

    detection = detect_path(path)
    if detection.kind != EMBEDDING:
        raise UserError(f"{Path(path).name} is not an embedding: it is a {detection.description}", where=str(path))
    if detection.family is not None and detection.family != family:
        raise UserError(
            f"this embedding is for {detection.family} ({detection.reason}), not for this {family} model",
            where=str(path),
        )
    data, _ = read_tensor_file(path)
    try:
        return a1111_to_embedding(data, family)["text_encoder"].float()
    except KeyMapError as error:
        raise UserError(f"not an embedding file: {error.message}", where=str(path), hint=error.hint) from None
