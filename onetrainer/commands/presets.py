"""`onetrainer presets [NAME]`: list the shipped presets, or print one as YAML to start a config."""

from __future__ import annotations

from typing import Annotated

import typer

from onetrainer.util.config.presets import preset_names
from onetrainer.util.errors import UserError


def _lora_preset() -> str:
    """A shipped LoRA preset to show in the example (the names come from the files, not from here)."""
    try:
        names = preset_names()
    except FileNotFoundError:  # a broken install: `presets` itself reports it; `--help` must still work
        return "NAME"
    return next((name for name in names if name.endswith("-lora")), names[0] if names else "NAME")


EXAMPLES = (
    ("list the presets with a description each", "onetrainer presets"),
    ("start a config from a preset", f"onetrainer presets {_lora_preset()} > my-lora.yaml"),
)


class UnknownPreset(UserError):
    """`presets NAME` with a name no preset has: not a config problem, so not titled as one."""

    title = "Unknown preset"


def presets(
    name: Annotated[
        str | None, typer.Argument(metavar="NAME", help="Preset to print as YAML (omit to list them all).")
    ] = None,
) -> None:
    """List the shipped training presets, or print one (`onetrainer presets NAME > my.yaml`)."""
    from onetrainer.ui.console import stdout
    from onetrainer.ui.tables import preset_table
    from onetrainer.util.config.presets import preset_description, preset_text
    from onetrainer.util.suggest import did_you_mean

    names = preset_names()
    if name is None:
        stdout.print(preset_table([(preset, preset_description(preset)) for preset in names]))
        return
    if name not in names:
        raise UnknownPreset(
            f"no preset is named {name!r}; {did_you_mean(name, names)}".rstrip("; "),
            where="the NAME argument",
            hint=f"The presets are: {', '.join(names)}. `onetrainer presets` describes each.",
        )
    typer.echo(preset_text(name), nl=False)
