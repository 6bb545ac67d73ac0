"""Errors as each API dialect shapes them: one table per dialect, used by the middlewares and handlers.

- Ollama (/api/*, and anything not below): `{"error": message}`.
- OpenAI (/v1/*): `{"error": {"message", "type", "param", "code"}}`.
- Anthropic (/v1/messages): `{"type": "error", "error": {"type", "message"}}`.

The dialect follows the path, so an error raised before any handler runs (a missing key, a body over
the cap, an unknown route) has the same shape as one the handler raises.
"""

from __future__ import annotations

import functools

import orjson
from aiohttp import web

OLLAMA, OPENAI, ANTHROPIC = "ollama", "openai", "anthropic"

# status -> the dialect's error type; any other status is the dialect's generic "api_error"
_TYPES = {
    OPENAI: {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
             404: "not_found_error", 413: "invalid_request_error", 503: "server_error"},
    ANTHROPIC: {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
                404: "not_found_error", 413: "request_too_large", 503: "overloaded_error"},
}


class ApiError(Exception):
    """Raised by handlers and helpers; answered with `status` and `message` in the route's dialect.
    `param` names the offending field where OpenAI's shape has room for it."""

    def __init__(self, status: int, message: str, param: str | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param


def dialect_for(path: str) -> str:
    if path.startswith("/v1/messages"):
        return ANTHROPIC
    if path.startswith("/v1/"):
        return OPENAI
    return OLLAMA


def error_body(dialect: str, status: int, message: str, param: str | None = None) -> dict:
    if dialect == OLLAMA:
        return {"error": message}
    kind = _TYPES[dialect].get(status, "api_error")
    if dialect == ANTHROPIC:
        return {"type": "error", "error": {"type": kind, "message": message}}
    return {"error": {"message": message, "type": kind, "param": param, "code": None}}


def error_response(request: web.Request, status: int, message: str, *, headers: dict | None = None,
                   param: str | None = None) -> web.Response:
    body = orjson.dumps(error_body(dialect_for(request.path), status, message, param))
    return web.Response(status=status, body=body, content_type="application/json", headers=headers)


def answer_errors(handler):
    """Decorator: an ApiError from the route answered in its dialect (the middleware does the same for
    what escapes; handlers that stream answer before the middleware could)."""

    @functools.wraps(handler)
    async def wrapped(request: web.Request):
        try:
            return await handler(request)
        except ApiError as exc:
            return error_response(request, exc.status, exc.message, param=exc.param)

    return wrapped
