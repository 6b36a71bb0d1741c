"""How every command's `--help` names what to type, and the examples it ends with.

Typer's rich help shows each parameter's Python type: `<bool>` beside flags that take no value,
`<list[str]>` for repeatable ones, and `{config}` in the usage line for an argument whose description
says CONFIG. `HelpfulCommand` shows one word per value instead, the same in the usage line, the
argument table and the descriptions: the declared `metavar`, else the argument's name in capitals, or
for an option its value type (TEXT, INTEGER, NUMBER, PATH, or the choices); flags show none.

Typer builds its parameter objects itself and offers no hook to choose their class, so the command
re-classes them, once, when it is built: the subclasses below change only how they are displayed.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, get_args

from rich.markup import escape
from typer.core import TyperArgument, TyperCommand, TyperOption

_TYPE_WORDS: dict[Any, str] = {str: "TEXT", int: "INTEGER", float: "NUMBER", Path: "PATH"}


def value_word(param: TyperArgument | TyperOption) -> str:
    """One word for the value a parameter takes: its choices, else its (element) type in capitals."""
    descriptor = param.type_descriptor
    choices = descriptor.choices
    if choices is not None:
        return "|".join(str(getattr(choice, "value", choice)) for choice in choices)
    annotation = descriptor.annotation
    if descriptor.is_list:
        annotation = get_args(annotation)[0]
    if descriptor.is_path:
        return "PATH"
    return _TYPE_WORDS.get(annotation, getattr(annotation, "__name__", str(annotation)).upper())


class _Argument(TyperArgument):
    def display_type_rich(self, ctx: Any) -> str | None:
        """Nothing: the name column already shows the argument's word."""
        return None

    def get_usage_pieces(self, ctx: Any) -> list[str]:
        word = self.metavar or self.name.upper()
        return [word if self.required else f"[{word}]"]


class _Option(TyperOption):
    def display_type_rich(self, ctx: Any) -> str | None:
        if self.is_flag or self.count:
            return None
        return self.metavar or value_word(self)


def show_words(params: Sequence[Any]) -> None:
    """Re-class Typer's parameters (in place) so that help shows words instead of Python types."""
    for param in params:
        if type(param) is TyperArgument:
            param.__class__ = _Argument
            base = param.metavar or (param.name or "").upper()
            param.metavar = f"{base}..." if param.nargs != 1 and not base.endswith("...") else base
        elif type(param) is TyperOption:
            param.__class__ = _Option


class HelpfulCommand(TyperCommand):
    """A Typer command whose help shows words (CONFIG, PATH, fp32|fp16) instead of Python types."""

    def get_params(self, ctx: Any) -> list[Any]:
        """Every parameter, `--help` included (click adds it here), re-classed to show words."""
        params = super().get_params(ctx)
        show_words(params)
        return params


def examples_epilog(examples: Sequence[tuple[str, str]]) -> str:
    """The "Examples" section under a command's help: (what it does, the command line) pairs."""
    lines = ["[bold]Examples[/]"]
    for description, command in examples:
        lines.append(f"[dim]# {escape(description)}[/]\n{escape(command)}")
    return "\n\n".join(lines)
