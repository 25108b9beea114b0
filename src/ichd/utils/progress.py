"""Progress bars. One way to show progress: :func:`progress` (tqdm, to stderr, silenced by ``-q``)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")

_ENABLED = True


def set_progress_enabled(enabled: bool) -> None:
    """Turn progress bars on or off process-wide (the CLI's ``-q`` turns them off)."""
    global _ENABLED
    _ENABLED = enabled


def progress(iterable: Iterable[T], *, desc: str = "", total: int | None = None, unit: str = "it",
             leave: bool = False) -> Iterator[T]:
    """Wrap ``iterable`` in a progress bar on stderr (no bar when disabled or not a terminal-worthy job)."""
    return iter(tqdm(iterable, desc=desc, total=total, unit=unit, leave=leave, disable=not _ENABLED,
                     dynamic_ncols=True))


def progress_bar(*, desc: str = "", total: int | None = None, unit: str = "it", leave: bool = False) -> tqdm:
    """A manual progress bar (call ``.update(n)``, ``.set_postfix(...)``, ``.close()``)."""
    return tqdm(desc=desc, total=total, unit=unit, leave=leave, disable=not _ENABLED, dynamic_ncols=True)
