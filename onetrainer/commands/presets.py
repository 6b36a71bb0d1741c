"""`onetrainer presets [NAME]`: list the shipped presets, or print one as YAML to start a config."""

from __future__ import annotations

from typing import Annotated

import typer


def presets(
    name: Annotated[str | None, typer.Argument(help="Preset to print as YAML (omit to list them all).")] = None,
) -> None:
    """List the shipped training presets, or print one (`onetrainer presets sd15-lora > my.yaml`)."""
    from onetrainer.ui.console import stdout
    from onetrainer.ui.tables import preset_table
    from onetrainer.util.config.presets import preset_description, preset_names, preset_text

    if name is None:
        names = preset_names()
        stdout.print(preset_table([(preset, preset_description(preset)) for preset in names]))
        return
    typer.echo(preset_text(name), nl=False)
