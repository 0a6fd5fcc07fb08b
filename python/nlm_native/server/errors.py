"""Errors in OpenAI's shape: ``{"error": {"message", "type", "param", "code"}}`` with the right status."""

from __future__ import annotations

import re
from typing import Any

from fastapi.responses import JSONResponse

TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
         404: "not_found_error", 405: "invalid_request_error", 408: "timeout", 413: "invalid_request_error",
         422: "invalid_request_error", 429: "rate_limit_error", 500: "server_error", 503: "server_error",
         504: "timeout"}


class ApiError(Exception):
    def __init__(self, status: int, message: str, *, code: str | None = None, param: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.code, self.param = status, message, code, param
        self.headers = headers or {}


def body(status: int, message: str, code: str | None = None, param: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": TYPES.get(status, "server_error"), "param": param, "code": code}}


def internal(request_id: str) -> dict[str, Any]:
    """A 500's body: nothing of what failed, only the request id to find it in the log."""
    return body(500, f"internal error (request {request_id})")


def response(e: ApiError) -> JSONResponse:
    return JSONResponse(body(e.status, e.message, e.code, e.param), status_code=e.status, headers=e.headers)


def param_of(message: str) -> str | None:
    """The request field a validation message names first, when it starts with one."""
    m = re.search(r"unsupported field\(s\) '([^']+)'", message) or re.match(r"([a-z_]+) (?:must|is|needs)", message)
    return m.group(1) if m else None
