"""One error hierarchy for the whole package.

Library code raises these instead of printing; the CLI maps each class to an exit code and renders
`what`, `where` and `hint` as one short panel. A user-caused problem (bad config, missing file,
unsupported format) is a `UserError` and exits 2; anything else that goes wrong at run time is a
`RuntimeFailure` and exits 1.
"""

from __future__ import annotations


class OneTrainerError(Exception):
    """Base class: a message plus optional location and fix hint."""

    exit_code = 1
    title = "Error"

    def __init__(self, message: str, *, where: str | None = None, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.where = where
        self.hint = hint


class UserError(OneTrainerError):
    """The user asked for something invalid: exit code 2."""

    exit_code = 2


class ConfigError(UserError):
    """A config file, preset or override is invalid. Holds every problem found in one pass."""

    title = "Invalid config"

    def __init__(
        self,
        problems: list[ConfigProblem],
        *,
        where: str | None = None,
        hint: str | None = None,
    ) -> None:
        self.problems = problems
        lines = [str(p) for p in problems]
        super().__init__("\n".join(lines), where=where, hint=hint)


class ConfigProblem:
    """One invalid key: its dotted path, the offending value and what would be valid."""

    def __init__(self, path: str, message: str, value: object = None, *, has_value: bool = False) -> None:
        self.path = path
        self.message = message
        self.value = value
        self.has_value = has_value

    def __str__(self) -> str:
        location = self.path or "(top level)"
        if self.has_value:
            return f"{location} = {self.value!r}: {self.message}"
        return f"{location}: {self.message}"

    def __repr__(self) -> str:
        return f"ConfigProblem({self.path!r}, {self.message!r})"


class RuntimeFailure(OneTrainerError):
    """Something failed while doing valid work (I/O, a model that diverged): exit code 1."""


class Interrupted(OneTrainerError):
    """The user interrupted the run (Ctrl-C / SIGTERM): exit code 130."""

    exit_code = 130
    title = "Interrupted"
