"""Who may call the daemon and how much one request may ask: API keys, CORS, Host checks, limits.

Middlewares (wired in app.py, outermost first): `cors` (browser origins, preflights), `host_check`
(DNS-rebinding guard while bound to loopback), `auth` (bearer tokens when keys are configured),
`body_size` (Content-Length above LM_MAX_BODY refused before it is read). `check_limits` validates a
parsed JSON body (num_ctx, num_predict, batch sizes, message counts); `apply_limits` runs it once the
request's model is resolved (runner/server/inference.py `resolve_model`, the one lookup every route
that runs a model makes), so its errors come out in the route's own error shape.
See docs/security.md for the threat model.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import logging
import os
import socket
import time
from pathlib import Path

from aiohttp import web

from runner.settings import Settings, parse_duration
from runner.engine.speculative import DRAFT_TYPES, MAX_DRAFT_NUM_PREDICT
from runner.server.errors import error_response
from runner.server.http import bad_request

log = logging.getLogger("lm.security")

# Routes anyone may call even when keys are set: a health check must not need a secret.
PUBLIC_ROUTES = frozenset({("GET", "/"), ("HEAD", "/"), ("GET", "/api/version"), ("HEAD", "/api/version")})
# The browser page's static files (webui.py), by route name, so that the page loads and can ask for a key.
# Matched on the route aiohttp resolved, not on the path's text: only those handlers, which serve files.
PUBLIC_RESOURCES = frozenset({"ui-redirect", "ui-index", "ui-asset"})
# Blob uploads stream to disk (any size); every other body is read into memory and capped.
STREAMED_BODY_PREFIXES = ("/api/blobs/",)

_INT64_MAX = 2**63 - 1
TOKEN_MAX = 2**31 - 1  # llama.cpp token ids are int32 (/api/generate `context`, /api/detokenize)
_MAX_DURATION_S = (2**63 - 1) // 10**9  # Go's longest time.Duration (~292 years), as Ollama parses keep_alive
MAX_NUM_BATCH = 65536
MAX_NUM_THREAD = 1024


# ---------------------------------------------------------------- CORS

def default_origins() -> list[str]:
    """Ollama's defaults: localhost, 127.0.0.1 and 0.0.0.0 on any port, and desktop-app schemes."""
    origins = []
    for host in ("localhost", "127.0.0.1", "0.0.0.0", "[::1]"):
        origins += [f"http://{host}", f"https://{host}", f"http://{host}:*", f"https://{host}:*"]
    return origins + ["app://*", "file://*", "tauri://*", "vscode-webview://*", "vscode-file://*"]


class OriginPolicy:
    """An allow-list of origins; an entry may hold one `*` (any text there), and `*` alone allows all."""

    def __init__(self, extra: tuple[str, ...] | list[str] = ()):
        entries = [o.strip().lower().rstrip("/") for o in (*extra, *default_origins()) if o.strip()]
        self.allow_all = "*" in entries
        self.exact = {e for e in entries if "*" not in e}
        self.wildcards = [tuple(e.split("*", 1)) for e in entries if "*" in e and e != "*"]

    def allows(self, origin: str) -> bool:
        origin = origin.strip().lower()
        if self.allow_all or origin in self.exact:
            return True
        return any(len(origin) >= len(pre) + len(post) and origin.startswith(pre) and origin.endswith(post)
                   for pre, post in self.wildcards)


ALLOW_METHODS = "GET, POST, PUT, PATCH, DELETE, HEAD, OPTIONS"
ALLOW_HEADERS = ("Authorization, Content-Type, User-Agent, Accept, X-Requested-With, X-Api-Key, X-Request-Id, "
                 "OpenAI-Beta, Anthropic-Version, Anthropic-Beta")
EXPOSE_HEADERS = "X-Request-Id"


def cors_middleware(settings: Settings):
    policy = OriginPolicy(settings.origins)

    @web.middleware
    async def cors(request: web.Request, handler):
        origin = request.headers.get("Origin")
        if not origin:
            return await handler(request)
        host = request.host
        if origin.lower() in (f"http://{host}".lower(), f"https://{host}".lower()):
            return await handler(request)  # same origin: not a cross-origin request
        if not policy.allows(origin):
            log.info("refused origin %r for %s %s", origin, request.method, request.path)
            return error_response(request, 403, f"origin not allowed: {origin} (see LM_ORIGINS)")
        allow_origin = "*" if policy.allow_all else origin
        if request.method == "OPTIONS":  # preflight: answered here, never reaches auth or a route
            requested = request.headers.get("Access-Control-Request-Headers")
            return web.Response(status=204, headers={
                "Vary": "Origin", "Access-Control-Allow-Origin": allow_origin,
                "Access-Control-Allow-Methods": ALLOW_METHODS,
                # The origin is trusted, so any header it asks for is; the fixed list serves old browsers.
                "Access-Control-Allow-Headers": requested or ALLOW_HEADERS, "Access-Control-Max-Age": "43200",
            })
        request["lm.cors_origin"] = allow_origin  # added to the response as it is prepared (cors_headers)
        return await handler(request)

    return cors


async def cors_headers(request: web.Request, response: web.StreamResponse) -> None:
    """on_response_prepare: CORS headers on every answer to an allowed origin, streams included
    (a stream is prepared inside its handler, before a middleware could see it)."""
    origin = request.get("lm.cors_origin")
    if origin and "Access-Control-Allow-Origin" not in response.headers:
        response.headers["Access-Control-Allow-Origin"] = origin
        response.headers["Access-Control-Expose-Headers"] = EXPOSE_HEADERS
        response.headers["Vary"] = "Origin"


# ---------------------------------------------------------------- Host header (DNS rebinding)

def is_loopback_host(host: str) -> bool:
    host = host.strip("[]").lower()
    if host in ("localhost", ""):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host.endswith(".localhost")


def _local_host_name(name: str) -> bool:
    name = name.lower().rstrip(".")
    if name in ("", "localhost"):
        return True
    try:
        if name == socket.gethostname().lower():
            return True
    except OSError:
        pass
    return name.endswith((".localhost", ".local", ".internal"))


def host_check_middleware(settings: Settings):
    """While bound to loopback, refuse a Host header naming a public host, as Ollama does.

    A web page on evil.example can make a victim's browser resolve evil.example to 127.0.0.1
    (DNS rebinding) and call the daemon "same-origin"; such requests carry Host: evil.example.
    """
    active = is_loopback_host(settings.host)

    @web.middleware
    async def host_check(request: web.Request, handler):
        if not active:
            return await handler(request)
        host = request.host or ""
        if host.startswith("["):
            name = host[1:host.find("]")] if "]" in host else host
        else:
            name = host.rsplit(":", 1)[0] if host.count(":") == 1 else host
        try:
            ip = ipaddress.ip_address(name)
            if ip.is_loopback or ip.is_private or ip.is_unspecified or ip.is_link_local:
                return await handler(request)
        except ValueError:
            if _local_host_name(name):
                return await handler(request)
        log.info("refused Host header %r for %s %s", host, request.method, request.path)
        return error_response(request, 403, "host not allowed")

    return host_check


# ---------------------------------------------------------------- API keys

def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


class KeyRing:
    """The accepted API keys: LM_API_KEYS plus LM_API_KEYS_FILE (re-read when the file changes).

    Only SHA-256 digests are kept, and comparisons are of equal-length digests with
    hmac.compare_digest over every key, so timing tells nothing about a key or which one matched.
    """

    def __init__(self, keys: tuple[str, ...] = (), keys_file: Path | None = None):
        self._static = [_digest(k) for k in keys if k]
        self._file = keys_file
        self._file_keys: list[bytes] = []
        self._file_stamp: tuple | None = None
        self._checked = 0.0
        self.enabled = bool(self._static or keys_file)
        short = [k for k in keys if k and len(k) < 16]
        if short:
            log.warning("%d API key(s) are shorter than 16 characters: use long random keys "
                        "(e.g. `openssl rand -hex 32`)", len(short))
        if keys_file:
            self._reload(force=True)

    def _reload(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._checked < 1.0:
            return
        self._checked = now
        try:
            st = os.stat(self._file)
            stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
            if stamp == self._file_stamp:
                return
            lines = Path(self._file).read_text().splitlines()
        except OSError as exc:
            if self._file_stamp is not None or force:
                log.error("cannot read LM_API_KEYS_FILE %s: %s; only LM_API_KEYS are accepted", self._file,
                          exc.strerror or exc)
            self._file_stamp, self._file_keys = None, []
            return
        if st.st_mode & 0o077:
            log.warning("LM_API_KEYS_FILE %s can be read by other users: chmod 600 it", self._file)
        keys = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
        self._file_keys, self._file_stamp = [_digest(k) for k in keys], stamp
        log.info("loaded %d API key(s) from %s", len(keys), self._file)

    def check(self, token: str) -> bool:
        if self._file:
            self._reload()
        got = _digest(token)
        ok = False
        for key in (*self._static, *self._file_keys):
            ok |= hmac.compare_digest(got, key)
        return ok


def request_token(request: web.Request) -> str | None:
    """The key a client sent: `Authorization: Bearer <key>` (Ollama/OpenAI clients) or `X-Api-Key` (Anthropic's)."""
    auth = request.headers.get("Authorization", "")
    scheme, _, value = auth.strip().partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return request.headers.get("X-Api-Key", "").strip() or None


def _public_resource(request: web.Request) -> bool:
    resource = request.match_info.route.resource
    return request.method in ("GET", "HEAD") and resource is not None and resource.name in PUBLIC_RESOURCES


def auth_middleware(settings: Settings):
    ring = KeyRing(settings.api_keys, settings.api_keys_file)

    @web.middleware
    async def auth(request: web.Request, handler):
        if not ring.enabled or (request.method, request.path) in PUBLIC_ROUTES or _public_resource(request):
            return await handler(request)
        token = request_token(request)
        if token is not None and ring.check(token):
            return await handler(request)
        # Never log the token: only that one was missing or wrong, and from where.
        log.warning("%s API key for %s %s from %s", "invalid" if token else "missing", request.method, request.path,
                    request.remote)
        message = "unauthorized: invalid API key" if token else "unauthorized: missing API key (Authorization: Bearer)"
        return error_response(request, 401, message, headers={"WWW-Authenticate": 'Bearer realm="lm"'})

    auth.keyring = ring  # type: ignore[attr-defined]
    return auth


# ---------------------------------------------------------------- limits

def body_size_middleware(settings: Settings):
    """Refuses a declared Content-Length over LM_MAX_BODY before reading it (blob uploads excepted).

    Bodies without a length (chunked) are capped as they are read (aiohttp's client_max_size).
    """

    @web.middleware
    async def body_size(request: web.Request, handler):
        length = request.content_length
        if (length is not None and length > settings.max_body
                and not request.path.startswith(STREAMED_BODY_PREFIXES)):
            return error_response(request, 413, f"request body too large ({length} bytes; the limit is "
                                                f"{settings.max_body}, LM_MAX_BODY)")
        return await handler(request)

    return body_size



def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_range(container: dict, key: str, low: int, high: int, label: str, setting: str = "") -> None:
    value = container.get(key)
    if not _number(value):
        return  # absent, null or of a wrong type: the route's own validation answers that
    if value != value or not (low <= value <= high):  # NaN fails both comparisons
        hint = f", {setting}" if setting else ""
        raise bad_request(f"{label} must be between {low} and {high}{hint}; got {value}", label.split(".")[0])


def _check_count(container: dict, key: str, limit: int, what: str, setting: str) -> None:
    value = container.get(key)
    if isinstance(value, list) and len(value) > limit:
        raise bad_request(f"too many {what}: {len(value)} (the limit is {limit}, {setting})", key)


_PREDICT_FIELDS = {  # route -> the field that caps generated tokens
    "/v1/chat/completions": ("max_completion_tokens", "max_tokens"),
    "/v1/completions": ("max_tokens",),
    "/v1/responses": ("max_output_tokens",),
    "/v1/messages": ("max_tokens",),
}
_MESSAGE_FIELDS = {"/api/chat": "messages", "/v1/chat/completions": "messages", "/v1/messages": "messages",
                   "/v1/responses": "input"}
_BATCH_FIELDS = {"/api/embed": "input", "/v1/embeddings": "input", "/api/rerank": "documents",
                 "/v1/rerank": "documents"}


def _request_limit(path: str, body: dict):
    """The generation limit a request gives (None when it gives none), per API."""
    if path in ("/api/generate", "/api/chat"):
        options = body.get("options")
        return options.get("num_predict") if isinstance(options, dict) else None
    for name in _PREDICT_FIELDS.get(path, ()):
        if body.get(name) is not None:
            return body[name]
    return None


def needs_model_limit(path: str, body: dict, s: Settings) -> bool:
    """Whether LM_MAX_PREDICT may have to fill in a limit: the request sets none (or an unlimited one)."""
    if s.max_predict <= 0 or path not in ("/api/generate", "/api/chat", *_PREDICT_FIELDS):
        return False
    limit = _request_limit(path, body)
    native = path in ("/api/generate", "/api/chat")  # where -1 and -2 mean "no limit"
    return limit is None or (native and _number(limit) and limit < 0)


def option_bounds(s: Settings) -> dict[str, tuple[int, int, str]]:
    """The numeric options `check_limits` bounds: name -> (lowest, highest, the setting that sets the
    highest, or ""). openapi.py's schema states the same ranges from this table."""
    return {
        "num_ctx": (0, s.max_context, "LM_MAX_CONTEXT"),
        "num_predict": (-2, s.max_predict if s.max_predict > 0 else _INT64_MAX,
                        "LM_MAX_PREDICT" if s.max_predict > 0 else ""),
        "num_batch": (1, MAX_NUM_BATCH, ""),
        "num_thread": (0, MAX_NUM_THREAD, ""),
        "repeat_last_n": (-1, s.max_context, ""),
        "num_keep": (-1, s.max_context, ""),
        "top_k": (-1, _INT64_MAX, ""),
        "draft_num_predict": (0, MAX_DRAFT_NUM_PREDICT, ""),
    }


def check_limits(path: str, body: dict, s: Settings, model_predict: int | None = None) -> None:
    """Validates the sizes a request asks for (ApiError 400 otherwise), and caps generation.

    Bounds: options.num_ctx 0..LM_MAX_CONTEXT; options.num_predict (max_tokens, max_output_tokens)
    -2..LM_MAX_PREDICT; num_batch, num_thread, repeat_last_n, num_keep sane; keep_alive a duration Go can
    hold; messages and embedding inputs counted; generate's `context` token ids, no more than LM_MAX_CONTEXT.
    With LM_MAX_PREDICT set, a request that sets no limit (or an unlimited one) gets LM_MAX_PREDICT, unless
    the model's own num_predict (`model_predict`, its `PARAMETER num_predict`) is within it and the request set none.
    """
    max_predict = s.max_predict if s.max_predict > 0 else _INT64_MAX
    if body.get("keep_alive") is not None:
        try:
            keep_alive = parse_duration(body["keep_alive"])
        except (ValueError, TypeError) as exc:
            raise bad_request(str(exc), "keep_alive") from None
        if not keep_alive <= _MAX_DURATION_S:  # also catches NaN
            raise bad_request(f"keep_alive out of range (at most {_MAX_DURATION_S} seconds; negative keeps the model "
                       "loaded)", "keep_alive")
    options = body.get("options")
    if isinstance(options, dict):
        for name, (low, high, setting) in option_bounds(s).items():
            _check_range(options, name, low, high, f"options.{name}", setting)
        draft_type = options.get("draft_type")
        if isinstance(draft_type, str) and draft_type not in DRAFT_TYPES:
            raise bad_request(f'options.draft_type must be "ngram", "none" or ""; got {json.dumps(draft_type)}', "options")
    if needs_model_limit(path, body, s):
        unset = _request_limit(path, body) is None
        if not (unset and model_predict is not None and 0 <= model_predict <= s.max_predict):
            if path in ("/api/generate", "/api/chat"):
                if options is None:
                    body["options"] = options = {}
                if isinstance(options, dict):
                    options["num_predict"] = s.max_predict
            else:
                body[_PREDICT_FIELDS[path][-1]] = s.max_predict
    for name in _PREDICT_FIELDS.get(path, ()):
        if _number(body.get(name)) and body[name] > max_predict:
            raise bad_request(f"{name} must be at most {max_predict} (LM_MAX_PREDICT); got {body[name]}", name)
    if path in _MESSAGE_FIELDS:
        _check_count(body, _MESSAGE_FIELDS[path], s.max_messages, "messages", "LM_MAX_MESSAGES")
    if path in _BATCH_FIELDS:
        _check_count(body, _BATCH_FIELDS[path], s.max_batch, "inputs", "LM_MAX_BATCH")
    if path == "/api/generate":
        _check_count(body, "context", s.max_context, "context tokens", "LM_MAX_CONTEXT")
        context = body.get("context")
        if isinstance(context, list) and not all(type(t) is int and 0 <= t <= TOKEN_MAX for t in context):
            raise bad_request("context must be a list of token ids (integers from 0)", "context")



def apply_limits(request: web.Request, body: dict, cfg) -> None:
    """`check_limits` for a request whose model `cfg` (a runner.model.config.ModelConfig) is resolved:
    LM_MAX_PREDICT must not override the model's own num_predict, which only the model says. `body` is
    the body as the client sent it (the route's own dialect), since the limits name its fields."""
    settings = request.app.get("settings")
    if settings is None:  # an app built without settings (unit tests): no limits configured
        return
    predict = cfg.parameters.get("num_predict")
    check_limits(request.path, body, settings, predict if type(predict) is int else None)


__all__ = [
    "OriginPolicy", "KeyRing", "auth_middleware", "cors_middleware", "host_check_middleware",
    "body_size_middleware", "check_limits", "apply_limits", "option_bounds", "needs_model_limit", "cors_headers", "default_origins", "is_loopback_host",
]
