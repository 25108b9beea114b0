"""Typed errors. Every message says what is wrong, where (file, tag), and what to do.

The CLI turns an :class:`IchdError` into one line on stderr and an exit code
(:attr:`IchdError.exit_code`); ``--debug`` shows the traceback.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class IchdError(Exception):
    """Root of all ichd errors."""

    exit_code: int = 1

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        self.message = message
        self.hint = hint
        super().__init__(message if hint is None else f"{message} — {hint}")


class InputError(IchdError, ValueError):
    """Bad or unusable input (a file, a folder, a CSV, an argument). Exit code 2."""

    exit_code = 2


class DependencyError(IchdError, ImportError):
    """An optional decoder or library is missing. The message names the package to install."""

    exit_code = 3


class ModelError(IchdError):
    """A model cannot be created, loaded or run (unknown name, bad checkpoint, sha256 mismatch)."""

    exit_code = 2


class ConfigError(IchdError, ValueError):
    """A configuration file or value is invalid."""

    exit_code = 2


def did_you_mean(value: str, choices: Iterable[str], *, n: int = 3) -> str:
    """Return a "did you mean ..." suffix for ``value`` among ``choices`` (empty when nothing is close)."""
    choices = list(choices)
    close = difflib.get_close_matches(value, choices, n=n, cutoff=0.5)
    if close:
        return "did you mean " + " or ".join(repr(c) for c in close) + "?"
    return "choose one of: " + ", ".join(sorted(choices))


def describe_exception(error: BaseException, *, limit: int = 200) -> str:
    """``"Type: message"`` on one line, at most ``limit`` characters, for messages about a broken input file.

    Library errors about corrupt data can quote the data itself (zipfile puts a whole garbled local header into
    its message): only the first line is kept, non-printable characters are escaped, and the text is cut.
    """
    text = f"{type(error).__name__}: {error}".splitlines()[0] if str(error) else type(error).__name__
    text = text.encode("ascii", "backslashreplace").decode("ascii")
    return text if len(text) <= limit else text[: limit - 3] + "..."

