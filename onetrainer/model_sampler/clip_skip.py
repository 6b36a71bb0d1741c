"""`sample --clip-skip`: A1111's clip skip as each text encoder's `layer_skip`.

A1111 counts the layer read from the end (1 = the model's own), for every text encoder at once; the
encoders a model reads only at their last layer or pooled output (T5, a CLIP read for its pooled
vector) keep it, as diffusers' pipelines apply `clip_skip` to the CLIP encoders read at a hidden layer.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from onetrainer.util.errors import UserError

if TYPE_CHECKING:
    from onetrainer.model.diffusion import DiffusionModel


def clip_skip_layers(model: DiffusionModel, clip_skip: int, *, where: str = "--clip-skip") -> dict[str, int]:
    """Text encoder -> layers skipped before the model's own, for the encoders that take it."""
    spec = model.spec
    takes = [name for name in model.text_encoder_names() if spec.component(name).takes_layer_skip]
    if clip_skip == 1:
        return dict.fromkeys(takes, 0)
    if not takes:
        raise UserError(
            f"{spec.title} models read their text encoders' last layers or pooled outputs only: clip skip does "
            "not apply",
            where=where,
            hint="Leave clip skip at 1 for this model.",
        )
    for name in takes:
        layers = getattr(model.components[name].config, "num_hidden_layers", None)
        if layers is not None and clip_skip > layers:
            title = spec.component(name).title
            raise UserError(f"{where} {clip_skip} skips more layers than the {title} has ({layers})", where=where)
    return dict.fromkeys(takes, clip_skip - 1)
