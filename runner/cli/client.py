"""The CLI's HTTP client for the daemon (stdlib only: the CLI must start fast)."""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Iterator

from runner.settings import client_base_url, setting


MODEL_HEADER = "X-LM-Model"


class ClientError(Exception):
    """An error to print as one line; `status` is the HTTP status when the daemon answered."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


# What urllib lets through when the daemon is not there or goes away mid-request (it wraps only a failed
# connect or send in URLError; a connection closed before or during the answer comes through raw).
_LOST = (urllib.error.URLError, http.client.HTTPException, OSError)


def _connection_error(base: str, exc: BaseException) -> ClientError:
    """One line for a connection that failed (`could not connect`) or broke half way (`lost the connection`)."""
    reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
    if isinstance(exc, urllib.error.URLError) and not isinstance(reason, (ConnectionResetError, BrokenPipeError)):
        return ClientError(f"could not connect to lm at {base}: {reason}")
    return ClientError(f"lost the connection to lm at {base}: {reason or type(reason).__name__}")


def _loopback(url: str) -> bool:
    host = (urllib.parse.urlsplit(url).hostname or "").lower()
    return host == "localhost" or host.startswith("127.") or host == "::1"


class Client:
    def __init__(self, base_url: str | None = None):
        self.base = (base_url or client_base_url()).rstrip("/")
        # A daemon on this machine is reached directly, never through HTTP_PROXY (as Go's clients, Ollama's
        # among them, skip the proxy for loopback): HTTP_PROXY is set for the pulls the daemon makes.
        handlers = [urllib.request.ProxyHandler({})] if _loopback(self.base) else []
        self._open = urllib.request.build_opener(*handlers).open

    def _request(self, method: str, path: str, body=None, *, data: bytes | None = None, timeout=None):
        headers = {}
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
            if isinstance(body, dict) and isinstance(body.get("model"), str) and body["model"].isascii():
                # A fleet's nginx routes on it, to keep a model's requests on the daemons that have it
                # loaded (docs/operations.md); a header, so the proxy need not read the body.
                headers[MODEL_HEADER] = body["model"]
        key = setting("API_KEY")
        if key:
            headers["Authorization"] = f"Bearer {key}"
        req = urllib.request.Request(self.base + path, data=data, method=method, headers=headers)
        try:
            return self._open(req, timeout=timeout)
        except urllib.error.HTTPError as exc:
            raw = exc.read()
            try:
                message = json.loads(raw).get("error") or raw.decode()
            except (ValueError, AttributeError):
                message = raw.decode(errors="replace") or exc.reason
            raise ClientError(message, exc.code) from None
        except _LOST as exc:
            raise _connection_error(self.base, exc) from None

    def json(self, method: str, path: str, body=None) -> dict:
        with self._request(method, path, body) as resp:
            raw = resp.read()
            return json.loads(raw) if raw.strip() else {}

    def stream(self, path: str, body: dict) -> Iterator[dict]:
        """NDJSON objects from a streaming route; an `{"error"}` line becomes a ClientError."""
        with self._request("POST", path, body) as resp:
            while True:
                try:
                    line = resp.readline()
                    obj = json.loads(line) if line.strip() else None
                except _LOST as exc:
                    raise _connection_error(self.base, exc) from None
                except ValueError:
                    raise ClientError(f"lm at {self.base} sent a line that is not JSON: {line[:80]!r}") from None
                if not line:
                    return
                if obj is None:
                    continue
                if "error" in obj:
                    raise ClientError(obj["error"])
                yield obj

    def head(self, path: str) -> int:
        try:
            with self._request("HEAD", path) as resp:
                return resp.status
        except ClientError as exc:
            if exc.status is None:
                raise
            return exc.status

    def upload(self, path: str, file, size: int) -> None:
        req = urllib.request.Request(self.base + path, data=file, method="POST",
                                     headers={"Content-Length": str(size), "Content-Type": "application/octet-stream"})
        key = setting("API_KEY")
        if key:
            req.add_header("Authorization", f"Bearer {key}")
        try:
            self._open(req).close()
        except urllib.error.HTTPError as exc:
            try:
                message = json.loads(exc.read() or b"{}").get("error") or str(exc)
            except (ValueError, AttributeError, *_LOST):
                message = str(exc)
            raise ClientError(message, exc.code) from None
        except _LOST as exc:  # the daemon went away during the upload
            raise _connection_error(self.base, exc) from None

    def is_up(self) -> bool:
        try:
            with self._request("GET", "/api/version", timeout=2):
                return True
        except ClientError:
            return False


def _is_local(base: str) -> bool:
    host = base.split("://", 1)[-1].rsplit(":", 1)[0].strip("[]")
    return host in ("127.0.0.1", "localhost", "::1", "0.0.0.0")


def ensure_daemon(client: Client) -> None:
    """Starts `lm serve` in the background when nothing answers on a local address."""
    if client.is_up() or not _is_local(client.base) or setting("NO_AUTOSTART"):
        return
    log_dir = os.path.join(os.path.expanduser("~"), ".cache", "lm")
    os.makedirs(log_dir, exist_ok=True)
    with open(os.path.join(log_dir, "serve.log"), "ab") as log:
        subprocess.Popen([sys.executable, "-m", "runner.cli", "serve"], stdin=subprocess.DEVNULL, stdout=log,
                         stderr=log, start_new_session=True)
    deadline = time.time() + 30
    while time.time() < deadline:
        if client.is_up():
            return
        time.sleep(0.1)
    raise ClientError(f"could not start lm serve (see {log_dir}/serve.log)")
