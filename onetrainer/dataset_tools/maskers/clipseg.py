"""CLIPSeg masks: pixels whose probability of matching any prompt reaches the threshold.

The prompts are encoded once per batch and paired with every image; the per-prompt probability maps
are combined with a maximum (a pixel is masked if it matches any prompt) and scaled back to each
image's own size before thresholding, so edges land where they are in the image.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from onetrainer.dataset_tools.sources import MODEL_OPTION, load_from_hub_or_path
from onetrainer.util.errors import UserError

if TYPE_CHECKING:
    import numpy as np
    import torch
    from PIL import Image


class ClipSegMasker:
    def __init__(
        self, processor: Any, model: Any, *, prompts: list[str], threshold: float, device: str, dtype: torch.dtype
    ) -> None:
        if not prompts:
            raise UserError("CLIPSeg needs at least one prompt", hint="Pass --prompt 'a cat' (repeatable).")
        self.processor = processor
        self.model = model
        self.prompts = prompts
        self.threshold = threshold
        self.device = device
        self.dtype = dtype

    @classmethod
    def load(
        cls, source: str, *, prompts: list[str], threshold: float, device: str, dtype: torch.dtype
    ) -> ClipSegMasker:
        from transformers import AutoProcessor, CLIPSegForImageSegmentation

        load_from_hub_or_path(lambda path: _check_clipseg(path, source), source, what="CLIPSeg model")
        processor = load_from_hub_or_path(AutoProcessor.from_pretrained, source, what="CLIPSeg model")
        model = load_from_hub_or_path(
            lambda path: CLIPSegForImageSegmentation.from_pretrained(path, dtype=dtype), source, what="CLIPSeg model"
        )
        model.to(device).eval()
        return cls(processor, model, prompts=prompts, threshold=threshold, device=device, dtype=dtype)

    def masks(self, images: list[Image.Image]) -> list[np.ndarray]:
        import torch

        count = len(self.prompts)
        text = self.processor.tokenizer(self.prompts, padding=True, return_tensors="pt")
        pixels = self.processor.image_processor(images=images, return_tensors="pt")["pixel_values"]
        with torch.inference_mode():
            logits = self.model(
                input_ids=text["input_ids"].repeat(len(images), 1).to(self.device),
                attention_mask=text["attention_mask"].repeat(len(images), 1).to(self.device),
                pixel_values=pixels.repeat_interleave(count, dim=0).to(self.device, self.dtype),
            ).logits
        probabilities = torch.sigmoid(logits.float()).reshape(len(images), count, *logits.shape[-2:])
        combined = probabilities.amax(dim=1, keepdim=True)
        return [self._at_size(combined[index : index + 1], image) for index, image in enumerate(images)]

    def _at_size(self, probability: torch.Tensor, image: Image.Image) -> np.ndarray:
        import torch.nn.functional as functional

        resized = functional.interpolate(probability, size=(image.height, image.width), mode="bilinear")
        return (resized[0, 0] >= self.threshold).float().cpu().numpy()


def _check_clipseg(path: str, source: str) -> None:
    """Refuse a model that is not CLIPSeg by its config, before its weights load: transformers would load
    another kind's weights into CLIPSeg's layers and fail on the first mismatched shape, with a message that
    names neither the model nor the problem (a BLIP), or fail on its processor (a tagger)."""
    from transformers import AutoConfig

    try:
        model_type = AutoConfig.from_pretrained(path).model_type
    except ValueError as error:  # a config.json transformers cannot read as any model type
        raise _not_clipseg(source, f"transformers says: {str(error).splitlines()[0]}") from None
    if model_type != "clipseg":
        raise _not_clipseg(source, f"Its config says it is a {model_type} model.")


def _not_clipseg(source: str, reason: str) -> UserError:
    return UserError(
        f"{source} is not a CLIPSeg model",
        where=MODEL_OPTION,
        hint=f"{reason} Pass a CLIPSeg folder or hub id (such as CIDAS/clipseg-rd64-refined), or --model color.",
    )
