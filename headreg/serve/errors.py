"""The one error type of the serving API (a leaf module: schema, limits and every route import it)."""

from __future__ import annotations

from typing import Mapping


class RequestError(Exception):
    """A request the server answers with ``status`` and ``{"error": message}`` instead of a result."""

    def __init__(self, status: int, message: str, headers: Mapping[str, str] | None = None):
        super().__init__(message)
        self.status = int(status)
        self.message = message
        self.headers = dict(headers or {})
