"""Error types shown to users.

Every error a user can cause derives from :class:`DiffMASError`; the CLI catches it, prints the
message (which must say what to do) and exits non-zero, without a traceback.
"""

from __future__ import annotations

import difflib


class DiffMASError(Exception):
    """An error caused by input or environment that the user can fix."""


class UnknownNameError(DiffMASError, KeyError):
    """A name (model, task, method, topology...) that is not registered."""

    def __init__(self, kind: str, name: str, valid: list[str], hint: str = ""):
        self.kind, self.name, self.valid = kind, name, sorted(valid)
        close = difflib.get_close_matches(name, self.valid, n=1)
        msg = f"unknown {kind} {name!r}; valid {kind}s: {', '.join(self.valid)}"
        if close:
            msg += f" (did you mean {close[0]!r}?)"
        if hint:
            msg += f". {hint}"
        super().__init__(msg)

    def __str__(self) -> str:  # KeyError would otherwise quote the message
        return self.args[0]


class ModelNotInstalledError(DiffMASError):
    """An offline registry model whose PyPI packages are not installed."""


class DataError(DiffMASError):
    """Data files that cannot be found or read."""


class ContextLengthError(DiffMASError):
    """A prompt (plus the tokens it needs) that does not fit the model's context window."""
