"""HTTP helpers shared by the route modules: errors as Ollama shapes them, JSON bodies, NDJSON streams."""

from __future__ import annotations

import functools
import json
from typing import Any

from aiohttp import web


class ApiError(Exception):
    """Raised by handlers; the error middleware turns it into `{"error": message}` with `status`."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


def errors_as(shape):
    """Decorator for routes of another API's dialect: an ApiError answered as `shape(exc)` (a JSON object)."""

    def decorate(handler):
        @functools.wraps(handler)
        async def wrapped(request: web.Request):
            try:
                return await handler(request)
            except ApiError as exc:
                return web.Response(status=exc.status, body=dumps(shape(exc)), content_type="application/json")

        return wrapped

    return decorate


def bad_request(message: str) -> ApiError:
    return ApiError(400, message)


def not_found(message: str) -> ApiError:
    return ApiError(404, message)


async def read_json(request: web.Request) -> dict:
    """The request body as a JSON object; 400 for anything else (as Ollama answers)."""
    raw = await request.read()
    if not raw.strip():
        raise bad_request("missing request body")
    try:
        body = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise bad_request(f"invalid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise bad_request("request body must be a JSON object")
    return body


def field(body: dict, name: str, kind: type | tuple, default: Any = None, *, required: bool = False) -> Any:
    """A typed field of a request body; 400 names the field when it is missing or of the wrong type."""
    value = body.get(name)
    if value is None:
        if required:
            raise bad_request(f"{name} is required")
        return default
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, kind) or (isinstance(value, bool) and kind in (int, float)):
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise bad_request(f"invalid value for {name}: expected {names}")
    return value


def dumps(obj: Any) -> bytes:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode()


class NDJSONStream:
    """A streamed response of one JSON object per line (Ollama's streaming format)."""

    def __init__(self, request: web.Request):
        self.request = request
        self.response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        self.started = False

    async def send(self, *objs: dict) -> None:
        if not self.started:
            await self.response.prepare(self.request)
            self.started = True
        await self.response.write(b"".join(dumps(o) + b"\n" for o in objs))

    async def finish(self) -> web.StreamResponse:
        if not self.started:
            await self.response.prepare(self.request)
        await self.response.write_eof()
        return self.response
