"""HTTP helpers shared by the route modules: JSON bodies, NDJSON streams (errors: runner/server/errors.py)."""

from __future__ import annotations

import contextlib
import json
import re
from typing import Any

import orjson
from aiohttp import web


from runner.server.errors import ApiError  # noqa: F401  (raised by every route module through here)


@contextlib.contextmanager
def translating(api: str):
    """Around turning another API's body into a native request: the translation trusts the documented
    shapes, so a field of another type surfaces as TypeError & co. That is the client's mistake (400)."""
    try:
        yield
    except (TypeError, AttributeError, KeyError, IndexError, ValueError) as exc:
        raise ApiError(400, f"invalid {api} request: a field has the wrong type or shape ({exc})") from exc


def bad_request(message: str, param: str | None = None) -> ApiError:
    return ApiError(400, message, param)  # `param`: the field, for OpenAI's error shape


def not_found(message: str) -> ApiError:
    return ApiError(404, message)


def _reject_constant(name: str):
    raise ValueError(f"invalid JSON: {name} is not a JSON value")


def json_too_deep(raw: bytes, obj: Any, limit: int) -> bool:
    """Whether objects/arrays nest deeper than `limit` (cheap when the text has few brackets)."""
    if raw.count(b"[") + raw.count(b"{") <= limit:
        return False
    stack = [(obj, 1)]
    while stack:
        value, depth = stack.pop()
        children = value.values() if isinstance(value, dict) else value
        for child in children:
            if isinstance(child, (dict, list)):
                if depth + 1 > limit:
                    return True
                stack.append((child, depth + 1))
    return False


_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")


def lone_surrogate(obj: Any) -> bool:
    """Whether a string of `obj` (a key or a value, at any depth) holds a UTF-16 surrogate that JSON's
    `\\ud800` escapes can produce alone. Such a string cannot be encoded as UTF-8, which every later step
    (the tokenizer, the store, the runner's socket) needs."""
    stack = [obj]
    while stack:
        value = stack.pop()
        if isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                return True
        elif isinstance(value, dict):
            stack.extend(value.keys())
            stack.extend(value.values())
        elif isinstance(value, list):
            stack.extend(value)
    return False


async def read_json(request: web.Request) -> dict:
    """The request body as a JSON object; 400 for anything else (as Ollama answers).

    Also enforced here, for every route that reads JSON: the body size (LM_MAX_BODY, 413), the nesting
    depth (LM_MAX_JSON_DEPTH) and no NaN/Infinity. It only parses: the request limits
    (`security.apply_limits`) need the model, and are applied where it is resolved.
    """
    settings = request.app.get("settings")
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        limit = settings.max_body if settings else request.client_max_size
        raise ApiError(413, f"request body too large (the limit is {limit} bytes, LM_MAX_BODY)") from None
    if not raw.strip():
        raise bad_request("missing request body")
    try:
        body = json.loads(raw, parse_constant=_reject_constant)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise bad_request(f"invalid JSON: {exc}") from None
    except ValueError as exc:
        raise bad_request(str(exc)) from None
    except RecursionError:
        raise bad_request("invalid JSON: nested too deeply") from None
    if not isinstance(body, dict):
        raise bad_request("request body must be a JSON object")
    # Only an escape can make a lone surrogate (raw bytes of one are invalid UTF-8, refused above): the
    # walk over every string is done for the bodies that have such an escape.
    if _SURROGATE_ESCAPE.search(raw) and lone_surrogate(body):
        raise bad_request("invalid JSON: a string holds a lone UTF-16 surrogate (\\ud800-\\udfff), which is not "
                          "valid Unicode")
    depth = settings.max_json_depth if settings else 64
    if json_too_deep(raw, body, depth):
        raise bad_request(f"invalid JSON: nested deeper than {depth} levels (LM_MAX_JSON_DEPTH)")
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


def dumps_line(obj: Any) -> bytes:
    """One NDJSON line, the hot path of every stream: orjson (UTF-8, compact, as `dumps`) where it can
    encode the object; `dumps` for what it refuses (non-string keys, integers beyond 64 bits, ...)."""
    try:
        return orjson.dumps(obj, option=orjson.OPT_APPEND_NEWLINE)
    except TypeError:  # orjson.JSONEncodeError is a TypeError
        return dumps(obj) + b"\n"


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
        await self.response.write(b"".join(map(dumps_line, objs)))

    async def finish(self) -> web.StreamResponse:
        if not self.started:
            await self.response.prepare(self.request)
        await self.response.write_eof()
        return self.response
