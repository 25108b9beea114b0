"""Errors the HTTP API answers with a status code: ``{"error": "...", "hint": "..."}`` and a 4xx status."""

from __future__ import annotations

from ichd.errors import IchdError


class ApiError(IchdError):
    """A request the service refuses; ``status`` is the HTTP status (400 bad input, 404, 409, 413, ...)."""

    exit_code = 2

    def __init__(self, message: str, *, hint: str | None = None, status: int = 400) -> None:
        super().__init__(message, hint=hint)
        self.status = status


class UploadRejected(ApiError):
    """An upload the service refuses (400 bad input, 413 too large)."""
