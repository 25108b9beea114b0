"""Logging set-up. Log messages must never contain patient names or IDs: log UIDs, counts and paths only."""

from __future__ import annotations

import logging
import sys
from typing import TextIO

LOGGER_NAME = "ichd"


def get_logger(name: str | None = None) -> logging.Logger:
    """The ``ichd`` logger or one of its children (``get_logger(__name__)``)."""
    if name is None or name == LOGGER_NAME:
        return logging.getLogger(LOGGER_NAME)
    if not name.startswith(LOGGER_NAME + "."):
        name = f"{LOGGER_NAME}.{name}"
    return logging.getLogger(name)


class StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """A stream handler that writes to whatever ``sys.stderr`` is when a record is emitted.

    A plain ``StreamHandler()`` keeps the ``sys.stderr`` of the moment it was made; in a long-lived process that
    runs commands in-process (a test runner, a notebook that redirects stderr) that stream may be closed later, and
    every log call then fails with "I/O operation on closed file".
    """

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property  # type: ignore[override]
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, value: TextIO) -> None:  # StreamHandler.__init__/setStream assign it; always follow sys.stderr
        pass


def configure_logging(verbosity: int = 0) -> None:
    """Configure the ``ichd`` logger: -1 quiet (errors), 0 warnings, 1 info, 2+ debug, to the current stderr.

    Idempotent: one :class:`StderrHandler` at most, whatever other handlers (e.g. the service's log file) exist.
    """
    level = {-1: logging.ERROR, 0: logging.WARNING, 1: logging.INFO}.get(verbosity, logging.DEBUG)
    logger = logging.getLogger(LOGGER_NAME)
    logger.setLevel(level)
    if not any(isinstance(h, StderrHandler) for h in logger.handlers):
        handler = StderrHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        logger.addHandler(handler)
    logging.captureWarnings(True)
