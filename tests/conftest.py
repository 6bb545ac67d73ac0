"""Shared fixtures: a real daemon on a free port with its own store, the real CLI, real models."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.gguf_factory import write_tiny_gguf
from tests.models import gemma3_gguf, smollm2_gguf

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Daemon:
    """`lm serve` in a subprocess, with helpers to call its API and run the CLI against it."""

    def __init__(self, models_dir: Path, env: dict | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.models_dir = models_dir
        self.env = {**os.environ, "LM_HOST": f"127.0.0.1:{self.port}", "LM_MODELS": str(models_dir),
                    "LM_NO_AUTOSTART": "1", "PYTHONUNBUFFERED": "1", **(env or {})}
        self.log_path = models_dir.parent / f"daemon-{self.port}.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> "Daemon":
        self.log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "runner.cli", "serve"], cwd=REPO, env=self.env,
                                     stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.time() + 30
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"daemon exited: {self.log_path.read_text()[-2000:]}")
            try:
                urllib.request.urlopen(self.url + "/api/version", timeout=1).close()
                return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("daemon did not start")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if getattr(self, "log", None):
            self.log.close()

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    # -- HTTP ---------------------------------------------------------------------------------
    def request(self, method: str, path: str, body=None, *, data: bytes | None = None, timeout: float = 120):
        """(status, parsed JSON or text or list of NDJSON objects)."""
        headers = {}
        if body is not None:
            data = body if isinstance(body, bytes) else json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        req = urllib.request.Request(self.url + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                status, raw, ctype = resp.status, resp.read(), resp.headers.get("Content-Type", "")
        except urllib.error.HTTPError as exc:
            status, raw, ctype = exc.code, exc.read(), exc.headers.get("Content-Type", "")
        if "ndjson" in ctype:
            return status, [json.loads(line) for line in raw.splitlines() if line.strip()]
        if "json" in ctype:
            return status, json.loads(raw) if raw.strip() else None
        return status, raw.decode(errors="replace")

    def post(self, path: str, body=None, **kw):
        return self.request("POST", path, body, **kw)

    def get(self, path: str, **kw):
        return self.request("GET", path, **kw)

    def upload_blob(self, path: Path) -> str:
        data = Path(path).read_bytes()
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        status, _ = self.request("POST", f"/api/blobs/{digest}", data=data)
        assert status in (200, 201), status
        return digest

    def create_from_gguf(self, name: str, gguf: Path, **extra) -> None:
        digest = self.upload_blob(gguf)
        status, body = self.post("/api/create", {"model": name, "files": {gguf.name: digest}, "stream": False,
                                                 **extra})
        assert status == 200, body

    # -- CLI ----------------------------------------------------------------------------------
    def cli(self, *args: str, input: str | None = None, timeout: float = 180) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "runner.cli", *args], cwd=REPO, env=self.env, input=input,
                              capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def make_daemon(tmp_path_factory):
    """Factory for daemons of a test's own (started with extra environment when given)."""
    started: list[Daemon] = []

    def make(env: dict | None = None, models_dir: Path | None = None) -> Daemon:
        d = Daemon(models_dir or tmp_path_factory.mktemp("models"), env).start()
        started.append(d)
        return d

    yield make
    for d in started:
        d.stop()


@pytest.fixture(scope="session")
def daemon(tmp_path_factory):
    """One daemon shared by the tests that only add models and read."""
    d = Daemon(tmp_path_factory.mktemp("shared-models")).start()
    yield d
    d.stop()


@pytest.fixture(scope="session")
def tiny_gguf(tmp_path_factory) -> Path:
    return write_tiny_gguf(tmp_path_factory.mktemp("gguf") / "tiny.gguf")


@pytest.fixture(scope="session")
def tiny_q4k_gguf(tmp_path_factory) -> Path:
    return write_tiny_gguf(tmp_path_factory.mktemp("gguf") / "tiny-q4k.gguf", quant="q4_k")


@pytest.fixture(scope="session")
def smollm2_path() -> Path:
    return smollm2_gguf()


@pytest.fixture(scope="session")
def gemma3_path() -> Path:
    return gemma3_gguf()


def create_bundled(d: Daemon, name: str, gguf: Path) -> None:
    """Creates a bundled model the way a user does: `lm create` with our Modelfile, FROM the GGUF."""
    from registry.bundled import BUNDLED

    text = BUNDLED[name].modelfile.read_text()
    lines = [f"FROM {gguf}" if line.startswith("FROM ") else line for line in text.splitlines()]
    mf = d.models_dir.parent / f"{name.replace(':', '-')}.Modelfile"
    mf.write_text("\n".join(lines) + "\n")
    result = d.cli("create", name, "-f", str(mf))
    assert result.returncode == 0, result.stderr


@pytest.fixture(scope="session")
def smollm2(daemon, smollm2_path) -> str:
    create_bundled(daemon, "smollm2:135m", smollm2_path)
    return "smollm2:135m"


@pytest.fixture(scope="session")
def gemma3(daemon, gemma3_path) -> str:
    create_bundled(daemon, "gemma3:270m", gemma3_path)
    return "gemma3:270m"


@pytest.fixture(scope="module")
def oai(daemon):
    """The openai SDK against the shared daemon's /v1."""
    import openai
    return openai.OpenAI(base_url=daemon.url + "/v1", api_key="unused")


@pytest.fixture(scope="module")
def claude(daemon):
    """The anthropic SDK against the shared daemon's /v1/messages."""
    import anthropic
    return anthropic.Anthropic(base_url=daemon.url, api_key="unused")


@pytest.fixture(scope="session")
def tiny(daemon, tiny_gguf) -> str:
    daemon.create_from_gguf("tiny", tiny_gguf)
    return "tiny"
