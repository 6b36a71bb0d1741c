"""What a tool does where a caption or mask already exists (kept apart so the CLI imports it cheaply)."""

from __future__ import annotations

from enum import Enum


class CaptionMode(str, Enum):
    REPLACE = "replace"
    FILL = "fill"
    ADD = "add"


class MaskMode(str, Enum):
    REPLACE = "replace"
    FILL = "fill"
    ADD = "add"
    SUBTRACT = "subtract"
    BLEND = "blend"
