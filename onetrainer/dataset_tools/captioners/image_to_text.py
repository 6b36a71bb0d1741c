"""Captions from any transformers image-to-text model (BLIP, BLIP-2, Florence-2, GIT, ...).

The processor and model come from `AutoProcessor` / `AutoModelForImageTextToText`, so any checkpoint
the installed transformers supports natively works, and none runs remote code. Decoding is greedy,
so the same images give the same captions.

A prompt steers the model but is never part of the caption: models that continue it (BLIP, BLIP-2
with OPT, GIT) return it before their own words, and it is cut off; Florence-2's task token is
turned into a question by its processor and never comes back. `--prefix` writes fixed text.
"""

from __future__ import annotations

from functools import cached_property
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

        processor = load_from_hub_or_path(load_processor, source, what="captioning model")
        model = load_from_hub_or_path(load_model, source, what="captioning model")
        model.to(device).eval()
        return cls(processor, model, device=device, dtype=dtype, prompt=prompt, max_new_tokens=max_new_tokens)

    @cached_property
    def echoed_prompt(self) -> str:
        """The prompt as it reads at the start of the model's decoded output; "" when it is not there.

        Decoder-only text models (BLIP's, OPT in BLIP-2, GIT's) return the prompt tokens before their
        own; encoder-decoder ones (Florence-2, BLIP-2 with Flan-T5) return only their own. The prompt
        goes through the model's tokenizer and back, so it has the output's case and spacing (BLIP's
        tokenizer lowercases "A Photo of" to "a photo of").
        """
        config = self.model.config
        text_config = getattr(config, "text_config", None) or config
        if not self.prompt or config.is_encoder_decoder or text_config.is_encoder_decoder:
            return ""
        tokenizer = getattr(self.processor, "tokenizer", self.processor)
        ids = tokenizer(self.prompt, add_special_tokens=False)["input_ids"]
        return " ".join(tokenizer.decode(ids, skip_special_tokens=True).split())

    def without_prompt(self, text: str) -> str:
        """`text` (whitespace already collapsed) less the prompt the model wrote back before it.

        A model's continuation may start mid-word ("a photo of" + "fice"), so this is a plain prefix
        test rather than a word match.
        """
        echo = self.echoed_prompt
        if echo and text.startswith(echo):
            return text[len(echo) :].strip()
        return text

    def caption(self, images: list[Image.Image]) -> list[str]:
        import torch

        arguments: dict[str, Any] = {"images": images, "return_tensors": "pt"}
        if self.prompt:
            arguments["text"] = [self.prompt] * len(images)
        try:
            inputs = self.processor(**arguments).to(self.device)
        except ValueError as error:
            if not self.prompt:
                raise
            # Florence-2 refuses a task token with other text after it, e.g. "<CAPTION> a cat".
            raise UserError(
                f"the captioning model does not accept the prompt {self.prompt!r}",
                hint=f"transformers says: {str(error).splitlines()[0]}",
            ) from None
        inputs = {
            key: value.to(self.dtype) if torch.is_floating_point(value) else value for key, value in inputs.items()
        }
        with torch.inference_mode():
            generated = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False)
        texts = self.processor.batch_decode(generated, skip_special_tokens=True)
        return [self.without_prompt(" ".join(text.split())) for text in texts]
