"""ichd.utils.logging: the stderr handler follows sys.stderr, and configure_logging is idempotent."""

from __future__ import annotations

import io
import logging
import sys

import pytest

from ichd.utils.logging import LOGGER_NAME, StderrHandler, configure_logging, get_logger


@pytest.fixture
def clean_logger():
    logger = logging.getLogger(LOGGER_NAME)
    saved, level = list(logger.handlers), logger.level
    logger.handlers.clear()
    yield logger
    logger.handlers[:] = saved
    logger.setLevel(level)


def test_handler_writes_to_the_current_stderr_after_the_first_one_is_closed(clean_logger, monkeypatch) -> None:
    first = io.StringIO()
    monkeypatch.setattr(sys, "stderr", first)
    configure_logging(0)
    get_logger("ichd.test").warning("to the first stream")
    first.close()  # e.g. a test capture or a redirected notebook cell that ended
    second = io.StringIO()
    monkeypatch.setattr(sys, "stderr", second)
    get_logger("ichd.test").warning("to the second stream")
    assert "to the second stream" in second.getvalue()


def test_configure_logging_is_idempotent_and_keeps_other_handlers(clean_logger) -> None:
    other = logging.NullHandler()
    clean_logger.addHandler(other)  # e.g. the service's log file
    configure_logging(1)
    configure_logging(2)
    assert sum(isinstance(h, StderrHandler) for h in clean_logger.handlers) == 1
    assert other in clean_logger.handlers
    assert clean_logger.level == logging.DEBUG
