"""Captions from any transformers image-to-text model (BLIP, BLIP-2, Florence-2, GIT, ...).

The processor and model come from `AutoProcessor` / `AutoModelForImageTextToText`, so any checkpoint
the installed transformers supports natively works, and none runs remote code. Decoding is greedy,
so the same images give the same captions.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from onetrainer.dataset_tools.sources import load_from_hub_or_path
from onetrainer.util.errors import UserError

if TYPE_CHECKING:
    import torch
    from PIL import Image

TASK_PROMPTS = {"florence2": "<DETAILED_CAPTION>"}
"""Models that caption only when asked by a task token; the others caption unprompted."""


class ImageToTextCaptioner:
    def __init__(
        self,
        processor: Any,
        model: Any,
        *,
        device: str,
        dtype: torch.dtype,
        prompt: str | None,
        max_new_tokens: int,
    ) -> None:
        self.processor = processor
        self.model = model
        self.device = device
        self.dtype = dtype
        self.prompt = prompt if prompt is not None else TASK_PROMPTS.get(model.config.model_type)
        self.max_new_tokens = max_new_tokens

    @classmethod
    def load(
        cls, source: str, *, device: str, dtype: torch.dtype, prompt: str | None, max_new_tokens: int
    ) -> ImageToTextCaptioner:
        from transformers import AutoModelForImageTextToText, AutoProcessor

        def unsupported(error: ValueError) -> UserError:
            return UserError(
                f"{source} is not an image-to-text model that this transformers version supports natively",
                hint=f"transformers says: {str(error).splitlines()[0]}",
            )

        def load_processor(path: str) -> Any:
            try:
                return AutoProcessor.from_pretrained(path)
            except ValueError as error:
                raise unsupported(error) from None

        def load_model(path: str) -> Any:
            try:
                return AutoModelForImageTextToText.from_pretrained(path, dtype=dtype)
            except ValueError as error:
                raise unsupported(error) from None

        processor = load_from_hub_or_path(load_processor, source, what="captioning processor")
        model = load_from_hub_or_path(load_model, source, what="captioning model")
        model.to(device).eval()
        return cls(processor, model, device=device, dtype=dtype, prompt=prompt, max_new_tokens=max_new_tokens)

    def caption(self, images: list[Image.Image]) -> list[str]:
        import torch

        arguments: dict[str, Any] = {"images": images, "return_tensors": "pt"}
        if self.prompt:
            arguments["text"] = [self.prompt] * len(images)
        inputs = self.processor(**arguments).to(self.device)
        inputs = {
            key: value.to(self.dtype) if torch.is_floating_point(value) else value for key, value in inputs.items()
        }
        with torch.inference_mode():
            generated = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False)
        texts = self.processor.batch_decode(generated, skip_special_tokens=True)
        return [" ".join(text.split()) for text in texts]
