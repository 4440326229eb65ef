"""User-facing error types.

The CLI maps `ConfigError` (and its subclasses) to exit code 2 and prints only the message:
these are mistakes in the input that the user fixes, not bugs, so a traceback would hide
the one line that matters.
"""
from __future__ import annotations


class ConfigError(ValueError):
    """Bad input: a YAML field, an unknown registry name, a missing data file.

    `problems` holds one line per problem, each starting with the dotted path of the
    offending field (e.g. ``strategy.mem_size: Input should be greater than 0``).
    """

    def __init__(self, problems: str | list[str], *, source: str | None = None):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        self.source = source
        head = f"invalid configuration in {source}" if source else "invalid configuration"
        if len(self.problems) == 1:
            message = f"{head}: {self.problems[0]}"
        else:
            message = head + ":\n" + "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(message)


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN or infinite loss; the run is marked FAILED."""
