"""A client for OCI distribution registries (the API Ollama's registry and Docker's speak).

Talks HTTP with aiohttp: manifests, blobs (whole or by byte range), upload sessions (monolithic or
chunked, cross-repository mounts) and authentication:

* ``WWW-Authenticate: Bearer realm=...,service=...,scope=...`` challenges: a token is fetched from the
  realm (with the registry's credentials as HTTP Basic when there are some, anonymously otherwise),
  cached per host and repository, and the request is sent again;
* ``WWW-Authenticate: Basic`` challenges: the registry's credentials are sent as HTTP Basic.

Credentials, per registry host (``host`` or ``host:port`` as it appears in model names):

* ``LM_REGISTRY_AUTH``: comma-separated ``host=username:password`` entries (the password may hold
  ``:`` but not ``,``), e.g. ``LM_REGISTRY_AUTH=localhost:5000=me:s3cret,ghcr.io=me:ghp_xxx``;
* a Docker-style ``config.json``: ``LM_REGISTRY_CONFIG`` names it, else ``~/.docker/config.json`` is
  read when it exists (so ``docker login`` works); entries under ``"auths"`` with ``"auth"``
  (base64 of ``username:password``), ``"username"``/``"password"`` or ``"registrytoken"`` (sent as a
  bearer token as is). Credential helpers (``credsStore``) are not run.

The daemon reads these two settings (runner/settings.py) and passes them in (``load_credentials``,
``CredentialSource``): registry/ reads no environment. An entry of ``LM_REGISTRY_AUTH`` wins over the file. Credentials only ever go to their own registry
host and to the token realm that host names in its challenge, and never over plain http unless the
caller allowed an insecure registry.

``insecure`` means plain http (as Ollama's ``insecure`` flag does); otherwise https.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlencode, urljoin, urlsplit

import aiohttp

log = logging.getLogger(__name__)

MANIFEST_ACCEPT = ", ".join((
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.oci.image.manifest.v1+json",
))
TRANSIENT_STATUS = {408, 425, 429, 500, 502, 503, 504}
REDIRECT_STATUS = {301, 302, 303, 307, 308}


class RegistryError(Exception):
    """A registry answered with an error, or could not be reached; ``status`` when it answered."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


class NotFound(RegistryError):
    pass


class Unauthorized(RegistryError):
    pass


class TransientError(RegistryError):
    """Worth retrying: a 5xx/429, a dropped connection, a stalled transfer."""


# Errors of the transport itself (dropped connection, reset, timeout): retried by callers.
NETWORK_ERRORS = (aiohttp.ClientError, asyncio.TimeoutError, ConnectionError)


# ---- credentials ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Credential:
    username: str = ""
    password: str = ""
    token: str = ""  # a registry token sent as is ("registrytoken" in Docker's config)

    def basic(self) -> str | None:
        if not self.username and not self.password:
            return None
        return "Basic " + base64.b64encode(f"{self.username}:{self.password}".encode()).decode()


def _host_key(text: str) -> str:
    """``https://index.docker.io/v1/`` -> ``index.docker.io``; ``localhost:5000`` stays."""
    text = text.strip()
    if "://" in text:
        text = urlsplit(text).netloc or text.split("://", 1)[1]
    return text.split("/", 1)[0].lower()


def parse_auth_env(value: str) -> dict[str, Credential]:
    creds: dict[str, Credential] = {}
    for entry in value.split(","):
        entry = entry.strip()
        if not entry:
            continue
        host, sep, userpass = entry.partition("=")
        user, colon, password = userpass.partition(":")
        if not sep or not host.strip() or not colon:
            raise ValueError(f"LM_REGISTRY_AUTH: expected host=username:password, got {entry.split(':')[0]!r}...")
        creds[_host_key(host)] = Credential(user, password)
    return creds


def parse_docker_config(data: dict) -> dict[str, Credential]:
    creds: dict[str, Credential] = {}
    for host, entry in (data.get("auths") or {}).items():
        if not isinstance(entry, dict):
            continue
        user, password = entry.get("username") or "", entry.get("password") or ""
        if entry.get("auth"):
            try:
                user, _, password = base64.b64decode(entry["auth"]).decode().partition(":")
            except (ValueError, UnicodeDecodeError):
                log.warning("ignoring undecodable credentials for %s", host)
                continue
        token = entry.get("registrytoken") or ""
        if user or password or token:
            creds[_host_key(host)] = Credential(user, password, token)
    return creds


def load_credentials(auth: str | None = None, config: Path | str | None = None) -> dict[str, Credential]:
    """Credentials by registry host, from ``auth`` (LM_REGISTRY_AUTH's text) and the config file
    ``config`` (LM_REGISTRY_CONFIG; unset: ``~/.docker/config.json``). The caller reads the settings:
    this package reads no environment."""
    creds: dict[str, Credential] = {}
    configured = config
    path = Path(configured).expanduser() if configured else Path.home() / ".docker" / "config.json"
    if path.is_file():
        try:
            creds.update(parse_docker_config(json.loads(path.read_text())))
        except (OSError, ValueError, AttributeError) as exc:
            log.warning("ignoring registry config %s: %s", path, exc)
    elif configured:
        log.warning("LM_REGISTRY_CONFIG: no such file %s", path)
    if auth:
        creds.update(parse_auth_env(auth))
    return creds


@dataclass(frozen=True)
class CredentialSource:
    """Where a daemon's credentials come from (LM_REGISTRY_AUTH, LM_REGISTRY_CONFIG as the daemon read them);
    loaded again for each transfer, so that a ``docker login`` after the start counts."""
    auth: str | None = field(default=None, repr=False)
    config: Path | str | None = None

    def load(self) -> dict[str, Credential]:
        return load_credentials(self.auth, self.config)


# ---- challenges -------------------------------------------------------------------------------

_PARAM_RE = re.compile(r'([A-Za-z][A-Za-z0-9_-]*)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]+))')


def parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    """``Bearer realm="r",service="s",scope="repository:a:pull,push"`` -> ("bearer", {...})."""
    header = (header or "").strip()
    scheme, _, rest = header.partition(" ")
    params = {}
    for m in _PARAM_RE.finditer(rest):
        value = m.group(2) if m.group(2) is not None else m.group(3)
        params[m.group(1).lower()] = re.sub(r"\\(.)", r"\1", value)
    return scheme.lower(), params


# ---- the client -------------------------------------------------------------------------------

def new_session(**kw) -> aiohttp.ClientSession:
    # No overall timeout (a blob may take hours); a connection that stalls for a minute is an error.
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=60)
    # trust_env: HTTPS_PROXY / HTTP_PROXY / NO_PROXY (and ~/.netrc) apply to pulls and pushes, as in Ollama
    return aiohttp.ClientSession(timeout=timeout, auto_decompress=False, trust_env=True,
                                 connector=aiohttp.TCPConnector(limit=64), **kw)


class TokenCache:
    """Bearer tokens by (registry host, repository); shared by the transfers of one daemon."""

    def __init__(self):
        self._tokens: dict[tuple[str, str], str] = {}
        self._locks: dict[tuple[str, str], asyncio.Lock] = {}

    def get(self, key: tuple[str, str]) -> str | None:
        return self._tokens.get(key)

    def set(self, key: tuple[str, str], token: str) -> None:
        self._tokens[key] = token

    def lock(self, key: tuple[str, str]) -> asyncio.Lock:
        return self._locks.setdefault(key, asyncio.Lock())


Body = Callable[[], Any] | bytes | None  # a factory, so that a retried request can send its body again


class RegistryClient:
    """One registry host. ``session`` and ``tokens`` may be shared; the client closes only its own."""

    def __init__(self, host: str, *, insecure: bool = False, credentials: dict[str, Credential] | None = None,
                 session: aiohttp.ClientSession | None = None, tokens: TokenCache | None = None,
                 user_agent: str = "lm"):
        self.host = host
        self.insecure = insecure
        self.scheme = "http" if insecure else "https"
        self.base = f"{self.scheme}://{host}"
        creds = load_credentials() if credentials is None else credentials
        self.credential = creds.get(host.lower())
        self._own_session = session is None
        self.session = session or new_session()
        self.tokens = tokens or TokenCache()
        self.user_agent = user_agent

    async def close(self) -> None:
        if self._own_session:
            await self.session.close()

    async def __aenter__(self) -> "RegistryClient":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    def url(self, repo: str, *parts: str) -> str:
        return f"{self.base}/v2/{repo}/" + "/".join(parts)

    def _same_host(self, url: str) -> bool:
        parts = urlsplit(url)
        return parts.netloc.lower() == self.host.lower() and parts.scheme == self.scheme

    # -- requests --------------------------------------------------------------------------------

    async def request(self, method: str, url: str, *, repo: str = "", headers: dict | None = None,
                      body: Body = None, auth: bool = True) -> aiohttp.ClientResponse:
        """Sends a request (no redirects followed), answering one auth challenge; the caller releases
        the response. Network errors propagate (the caller decides to retry)."""
        key = (self.host.lower(), repo)
        for attempt in range(2):
            hdrs = {"User-Agent": self.user_agent, **(headers or {})}
            sent_auth = None
            if auth and self._same_host(url):
                sent_auth = self._auth_header(key)
                if sent_auth:
                    hdrs["Authorization"] = sent_auth
            data = body() if callable(body) else body
            resp = await self.session.request(method, url, headers=hdrs, data=data, allow_redirects=False)
            if resp.status != 401 or not auth or not self._same_host(url) or attempt:
                return resp
            challenge = resp.headers.get("WWW-Authenticate", "")
            resp.release()
            await self._answer_challenge(key, challenge, sent_auth)
        raise AssertionError("unreachable")

    def _auth_header(self, key: tuple[str, str]) -> str | None:
        token = self.tokens.get(key)
        if token:
            return token
        if self.credential and self.credential.token:
            return "Bearer " + self.credential.token
        return None

    async def _answer_challenge(self, key: tuple[str, str], header: str, rejected: str | None) -> None:
        scheme, params = parse_challenge(header)
        async with self.tokens.lock(key):
            current = self.tokens.get(key)
            if current and current != rejected:
                return  # another request got a fresh token meanwhile
            if scheme == "basic":
                basic = self.credential.basic() if self.credential else None
                if not basic:
                    raise Unauthorized(f"unauthorized: {self.host} requires a username and password "
                                       "(set LM_REGISTRY_AUTH)", 401)
                if basic == rejected:
                    raise Unauthorized(f"unauthorized: {self.host} rejected the credentials", 401)
                self.tokens.set(key, basic)
            elif scheme == "bearer":
                token = await self._fetch_token(params)
                if "Bearer " + token == rejected:
                    raise Unauthorized(f"unauthorized: access to {key[1] or self.host} denied", 401)
                self.tokens.set(key, "Bearer " + token)
            else:
                raise Unauthorized(f"unauthorized: {self.host} answered 401 without a usable challenge", 401)

    async def _fetch_token(self, params: dict[str, str]) -> str:
        realm = params.get("realm")
        if not realm:
            raise Unauthorized(f"unauthorized: {self.host} sent a bearer challenge without a realm", 401)
        realm_parts = urlsplit(realm)
        if realm_parts.scheme not in ("https", "http") or (realm_parts.scheme == "http" and not self.insecure):
            raise Unauthorized(f"refusing token realm {realm!r}: not https", 401)
        query = []
        if params.get("service"):
            query.append(("service", params["service"]))
        for scope in (params.get("scope") or "").split():
            query.append(("scope", scope))
        url = realm + ("&" if realm_parts.query else "?") + urlencode(query) if query else realm
        headers = {"User-Agent": self.user_agent}
        basic = self.credential.basic() if self.credential else None
        if basic:
            headers["Authorization"] = basic
        try:
            async with self.session.get(url, headers=headers, allow_redirects=False) as resp:
                raw = await resp.read()
                if resp.status >= 400:
                    detail = _error_text(raw) or resp.reason
                    raise Unauthorized(f"unauthorized: token request to {realm_parts.netloc} failed: "
                                       f"{resp.status} {detail}", 401)
        except NETWORK_ERRORS as exc:
            raise TransientError(f"token request to {realm_parts.netloc} failed: {exc}") from exc
        try:
            data = json.loads(raw)
            token = data.get("token") or data.get("access_token")
        except (ValueError, AttributeError):
            token = None
        if not isinstance(token, str) or not token:
            raise Unauthorized(f"unauthorized: no token from {realm_parts.netloc}", 401)
        return token

    async def checked(self, method: str, url: str, what: str, *, ok=(200,), **kw) -> aiohttp.ClientResponse:
        """``request`` that raises RegistryError (NotFound, Unauthorized, TransientError) unless the
        status is in ``ok``; network errors become TransientError."""
        try:
            resp = await self.request(method, url, **kw)
        except aiohttp.ClientSSLError as exc:  # retrying will not help (plain http needs `insecure`)
            raise RegistryError(f"{what}: {_describe(exc)}") from exc
        except NETWORK_ERRORS as exc:
            raise TransientError(f"{what}: {_describe(exc)}") from exc
        if resp.status in ok:
            return resp
        try:
            raw = b"" if method == "HEAD" else await resp.read()
        except NETWORK_ERRORS:
            raw = b""
        finally:
            resp.release()
        raise status_error(resp.status, what, raw, resp.reason)

    # -- manifests -------------------------------------------------------------------------------

    async def get_manifest(self, repo: str, reference: str) -> bytes:
        resp = await self.checked("GET", self.url(repo, "manifests", reference), "pull model manifest",
                                  repo=repo, headers={"Accept": MANIFEST_ACCEPT})
        try:
            return await resp.read()
        except NETWORK_ERRORS as exc:
            raise TransientError(f"pull model manifest: {_describe(exc)}") from exc
        finally:
            resp.release()

    async def put_manifest(self, repo: str, reference: str, data: bytes, media_type: str) -> None:
        resp = await self.checked("PUT", self.url(repo, "manifests", reference), "push manifest", ok=(200, 201, 202),
                                  repo=repo, headers={"Content-Type": media_type}, body=data)
        resp.release()

    # -- blobs -----------------------------------------------------------------------------------

    async def blob_exists(self, repo: str, digest: str) -> bool:
        try:
            resp = await self.checked("HEAD", self.url(repo, "blobs", digest), f"check blob {digest}",
                                      ok=(200, *REDIRECT_STATUS), repo=repo)
        except NotFound:
            return False
        resp.release()
        return True

    async def resolve_blob(self, repo: str, digest: str) -> tuple[str, bool]:
        """Where the blob's bytes are: (url, send registry auth). Follows redirects on the registry's
        own host; the first redirect elsewhere (a storage backend's signed URL) is the answer, reached
        without our credentials, as Ollama does."""
        url = self.url(repo, "blobs", digest)
        for _ in range(10):
            resp = await self.checked("HEAD", url, f"pull blob {digest[7:19]}", ok=(200, 206, *REDIRECT_STATUS),
                                      repo=repo, headers={"Accept-Encoding": "identity"})
            resp.release()
            if resp.status not in REDIRECT_STATUS:
                return url, True
            location = resp.headers.get("Location")
            if not location:
                raise RegistryError(f"pull blob {digest[7:19]}: redirect without a location", resp.status)
            url = urljoin(url, location)
            if not self._same_host(url):
                return url, False
        raise RegistryError(f"pull blob {digest[7:19]}: too many redirects")

    async def open_blob(self, url: str, *, repo: str, auth: bool, start: int = 0, end: int | None = None,
                        what: str = "pull blob") -> aiohttp.ClientResponse:
        """A GET of ``url`` (from ``resolve_blob``), from byte ``start`` to ``end`` (inclusive) when a
        range is asked; follows redirects. The response is 200 or 206; the caller releases it."""
        headers = {"Accept-Encoding": "identity"}
        if start or end is not None:
            headers["Range"] = f"bytes={start}-" + ("" if end is None else str(end))
        for _ in range(10):
            resp = await self.checked("GET", url, what, ok=(200, 206, *REDIRECT_STATUS), repo=repo, headers=headers,
                                      auth=auth)
            if resp.status not in REDIRECT_STATUS:
                return resp
            resp.release()
            location = resp.headers.get("Location")
            if not location:
                raise RegistryError(f"{what}: redirect without a location", resp.status)
            url = urljoin(url, location)
            auth = auth and self._same_host(url)
        raise RegistryError(f"{what}: too many redirects")

    # -- uploads ---------------------------------------------------------------------------------

    async def start_upload(self, repo: str, *, mount: str | None = None, mount_from: str | None = None) -> str | None:
        """Opens an upload session and returns its URL; None when ``mount`` was mounted from
        ``mount_from`` (another repository of this registry) instead."""
        url = self.url(repo, "blobs", "uploads") + "/"
        if mount and mount_from:
            url += "?" + urlencode({"mount": mount, "from": mount_from})
        resp = await self.checked("POST", url, "start upload", ok=(201, 202), repo=repo,
                                  headers={"Content-Length": "0"})
        resp.release()
        if resp.status == 201 and mount and mount_from:
            return None
        location = resp.headers.get("Docker-Upload-Location") or resp.headers.get("Location")
        if not location:
            raise RegistryError("start upload: no upload location in the answer", resp.status)
        return urljoin(url, location)

    async def upload_chunk(self, location: str, body: Body, start: int, size: int, *, repo: str) -> str:
        """PATCHes ``size`` bytes at offset ``start`` of the upload; returns the next upload URL."""
        headers = {"Content-Type": "application/octet-stream", "Content-Length": str(size),
                   "Content-Range": f"{start}-{start + size - 1}"}
        resp = await self.checked("PATCH", location, "upload blob", ok=(202, 204), repo=repo, headers=headers, body=body)
        resp.release()
        return urljoin(location, resp.headers.get("Location") or location)

    async def upload_status(self, location: str, *, repo: str) -> tuple[str, int]:
        """(upload URL, bytes the registry holds) of an upload session, to resume after an error."""
        resp = await self.checked("GET", location, "upload status", ok=(204, 200), repo=repo)
        resp.release()
        match = re.fullmatch(r"(?:bytes[= ])?0-(\d+)", (resp.headers.get("Range") or "").strip())
        held = int(match.group(1)) + 1 if match else 0
        return urljoin(location, resp.headers.get("Location") or location), held

    async def finish_upload(self, location: str, digest: str, *, repo: str, body: Body = None, size: int = 0) -> None:
        """PUTs the last bytes (``body``, may be none) and commits the upload as ``digest``."""
        parts = urlsplit(location)
        sep = "&" if parts.query else "?"
        url = location + sep + urlencode({"digest": digest})
        headers = {"Content-Type": "application/octet-stream", "Content-Length": str(size)}
        resp = await self.checked("PUT", url, "finish upload", ok=(201, 202, 204), repo=repo, headers=headers,
                                  body=body if size else b"")
        resp.release()


def _error_text(raw: bytes) -> str:
    """The message of a registry error body ({"errors": [{"code", "message"}]}) or the body itself."""
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return raw.decode(errors="replace").strip()[:200]
    if isinstance(data, dict):
        errors = data.get("errors")
        if isinstance(errors, list) and errors and isinstance(errors[0], dict):
            first = errors[0]
            return str(first.get("message") or first.get("code") or "").strip()
        if data.get("error"):
            return str(data["error"])
    return raw.decode(errors="replace").strip()[:200]


def status_error(status: int, what: str, raw: bytes = b"", reason: str | None = None) -> RegistryError:
    detail = _error_text(raw) or reason or ""
    if status == 404:
        # Ollama's words for a missing manifest or blob.
        return NotFound(f"{what}: file does not exist", 404)
    if status in (401, 403):
        return Unauthorized(f"{what}: unauthorized: {detail or 'access denied'}", status)
    message = f"{what}: {status}" + (f": {detail}" if detail else "")
    if status in TRANSIENT_STATUS:
        return TransientError(message, status)
    return RegistryError(message, status)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, asyncio.TimeoutError):
        return "timed out"
    return str(exc) or type(exc).__name__
