"""Logging set-up. Log messages must never contain patient names or IDs: log UIDs, counts and paths only."""

from __future__ import annotations

import logging

LOGGER_NAME = "ichd"


def get_logger(name: str | None = None) -> logging.Logger:
    """The ``ichd`` logger or one of its children (``get_logger(__name__)``)."""
    if name is None or name == LOGGER_NAME:
        return logging.getLogger(LOGGER_NAME)
    if not name.startswith(LOGGER_NAME + "."):
        name = f"{LOGGER_NAME}.{name}"
    return logging.getLogger(name)


def configure_logging(verbosity: int = 0) -> None:
    """Configure the ``ichd`` logger: -1 quiet (errors), 0 warnings, 1 info, 2+ debug."""
    level = {-1: logging.ERROR, 0: logging.WARNING, 1: logging.INFO}.get(verbosity, logging.DEBUG)
    logger = logging.getLogger(LOGGER_NAME)
    logger.setLevel(level)
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        logger.addHandler(handler)
    logging.captureWarnings(True)
