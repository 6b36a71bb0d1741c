"""The base every config section derives from.

Unknown keys are errors (never silently ignored, unlike OneTrainer's own config), values are validated
on assignment too, numbers must be finite (a `nan` learning rate passes every range check, since
every comparison with nan is false), and every field carries a description so listings can explain it.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Section(BaseModel):
    """A strict config section: forbid unknown keys, validate defaults and assignments."""

    model_config = ConfigDict(
        extra="forbid",
        validate_default=True,
        validate_assignment=True,
        use_enum_values=False,
        populate_by_name=False,
        allow_inf_nan=False,
    )
