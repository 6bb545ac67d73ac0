"""The OCI registry client, pull and push (registry/oci.py, pull.py, push.py) against a real registry.

The registry is Debian's `docker-registry` (the CNCF distribution server, installed by scripts/test.sh),
started on 127.0.0.1 with its own storage per test. A small proxy in front of it counts, throttles or
cuts blob transfers; a small token server signs the JWTs of the registry's bearer-token auth.
The helpers here are shared with test_pull_push.py and test_hf_pull.py.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import hashlib
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from aiohttp import web

from registry import MEDIA_CONFIG, MEDIA_MODEL, MEDIA_TEMPLATE, Layer, Manifest, ModelName, Store
from registry import pull as pull_mod
from registry import push as push_mod
from registry.oci import Credential, parse_auth_env, parse_challenge, parse_docker_config
from registry.pull import PARTIAL_DIR, PullError, Transfers, partial_files, plan_parts, pull_model
from registry.push import push_model
from tests.conftest import free_port

REGISTRY_BIN = shutil.which("docker-registry") or shutil.which("registry")
needs_registry = pytest.mark.skipif(
    REGISTRY_BIN is None,
    reason="no OCI registry server: scripts/test.sh installs Debian's docker-registry (apt-get install docker-registry)")
MiB = 1 << 20


# ---- helpers shared with the other registry tests -----------------------------------------------

class Registry:
    """A real registry (`docker-registry serve`) on 127.0.0.1 with its storage under ``root``."""

    def __init__(self, root: Path, auth: dict | None = None):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.host = f"127.0.0.1:{self.port}"
        self.data = self.root / "data"
        self.log_path = self.root / "registry.log"
        auth_yaml = ""
        if auth:
            auth_yaml = ("auth:\n  token:\n"
                         f"    realm: {auth['realm']}\n    service: {auth['service']}\n"
                         f"    issuer: {auth['issuer']}\n    rootcertbundle: {auth['cert']}\n")
        self.config = self.root / "config.yml"
        self.config.write_text(
            "version: 0.1\nlog:\n  level: info\n  accesslog:\n    disabled: false\n"
            f"storage:\n  filesystem:\n    rootdirectory: {self.data}\n  delete:\n    enabled: true\n"
            f"http:\n  addr: 127.0.0.1:{self.port}\n  secret: {secrets.token_hex(8)}\n" + auth_yaml)
        self.proc: subprocess.Popen | None = None

    def start(self) -> "Registry":
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([REGISTRY_BIN, "serve", str(self.config)], stdout=self._log,
                                     stderr=subprocess.STDOUT)
        deadline = time.time() + 15
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("registry exited: " + self.log_path.read_text()[-2000:])
            try:
                urllib.request.urlopen(f"http://{self.host}/v2/", timeout=1).close()
                return self
            except urllib.error.HTTPError:
                return self  # 401: up, with auth
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("registry did not start")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if getattr(self, "_log", None):
            self._log.close()

    def blob_data(self, digest: str) -> Path:
        hex_ = digest.split(":", 1)[1]
        return self.data / "docker/registry/v2/blobs/sha256" / hex_[:2] / hex_ / "data"

    def manifest_bytes(self, repo: str, tag: str) -> bytes:
        req = urllib.request.Request(f"http://{self.host}/v2/{repo}/manifests/{tag}",
                                     headers={"Accept": "application/vnd.docker.distribution.manifest.v2+json"})
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.read()

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")


class ServerThread:
    """An aiohttp app served on 127.0.0.1 from a thread of its own."""

    def __init__(self, app: web.Application):
        self.app = app
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def _serve(self) -> None:
        asyncio.set_event_loop(self.loop)
        self._runner = web.AppRunner(self.app)
        self.loop.run_until_complete(self._runner.setup())
        self.loop.run_until_complete(web.TCPSite(self._runner, "127.0.0.1", self.port).start())
        self._ready.set()
        self.loop.run_forever()
        self.loop.run_until_complete(self._runner.cleanup())
        self.loop.close()

    def start(self):
        self._thread.start()
        assert self._ready.wait(10), "test server did not start"
        return self

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)


class Proxy(ServerThread):
    """Forwards to a registry; counts the blob bytes it sends, optionally throttled (bytes/s over all
    transfers) or cutting the first blob transfer after ``cut_after`` bytes."""

    def __init__(self, upstream: str, rate: float | None = None, cut_after: int | None = None):
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.handle)
        super().__init__(app)
        self.host = f"127.0.0.1:{self.port}"
        self.upstream, self.rate, self.cut_after = upstream, rate, cut_after
        self.blob_bytes: collections.Counter = collections.Counter()
        self.blob_gets: list[tuple[str, str | None]] = []  # (digest, Range header)
        self._next = 0.0
        self._session = None
        app.on_cleanup.append(self._close)

    async def _close(self, _app) -> None:
        if self._session is not None:
            await self._session.close()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        try:
            return await self._forward(request)
        except ConnectionResetError:  # the client went away (a cancelled or killed pull)
            return web.Response(status=499)

    async def _forward(self, request: web.Request) -> web.StreamResponse:
        import aiohttp

        if self._session is None:
            self._session = aiohttp.ClientSession(auto_decompress=False)
        skip = {"host", "content-length", "transfer-encoding", "connection"}
        headers = {k: v for k, v in request.headers.items() if k.lower() not in skip}
        body = await request.read()
        digest = None
        if request.method == "GET" and "/blobs/sha256:" in request.path:
            digest = request.path.rsplit("/", 1)[1]
            self.blob_gets.append((digest, request.headers.get("Range")))
        async with self._session.request(request.method, f"http://{self.upstream}{request.path_qs}",
                                         headers=headers, data=body or None, allow_redirects=False) as up:
            out = web.StreamResponse(status=up.status, headers={
                k: v for k, v in up.headers.items() if k.lower() not in ("transfer-encoding", "connection")})
            await out.prepare(request)
            async for chunk in up.content.iter_chunked(64 * 1024):
                if digest and self.cut_after is not None and self.blob_bytes[digest] + len(chunk) > self.cut_after:
                    self.cut_after = None
                    request.transport.close()  # a dropped connection, mid-blob
                    return out
                await out.write(chunk)
                if digest:
                    self.blob_bytes[digest] += len(chunk)
                if self.rate:
                    now = asyncio.get_running_loop().time()
                    self._next = max(self._next, now) + len(chunk) / self.rate
                    await asyncio.sleep(self._next - now)
            await out.write_eof()
            return out


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class TokenServer(ServerThread):
    """The token service of a registry's bearer auth: grants the scopes asked for to ``users`` (HTTP
    Basic), nothing to anonymous callers, in RS256 JWTs signed with a self-signed certificate (via
    the openssl command) that the registry trusts."""

    SERVICE, ISSUER = "lm-test-registry", "lm-test-issuer"

    def __init__(self, root: Path, users: dict[str, str]):
        app = web.Application()
        app.router.add_get("/token", self.token)
        super().__init__(app)
        self.users = users
        self.requests: list[tuple[str | None, list[str]]] = []
        root.mkdir(parents=True, exist_ok=True)
        self.key, self.cert = root / "token.key", root / "token.pem"
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(self.key),
                        "-out", str(self.cert), "-days", "2", "-subj", "/CN=lm-test-token"],
                       check=True, capture_output=True)
        der = subprocess.run(["openssl", "x509", "-in", str(self.cert), "-outform", "DER"], check=True,
                             capture_output=True).stdout
        self.x5c = base64.b64encode(der).decode()

    def registry_auth(self) -> dict:
        return {"realm": f"{self.url}/token", "service": self.SERVICE, "issuer": self.ISSUER, "cert": self.cert}

    def _sign(self, claims: dict) -> str:
        header = {"alg": "RS256", "typ": "JWT", "x5c": [self.x5c]}
        signing_input = _b64url(json.dumps(header).encode()) + "." + _b64url(json.dumps(claims).encode())
        sig = subprocess.run(["openssl", "dgst", "-sha256", "-sign", str(self.key)], input=signing_input.encode(),
                             check=True, capture_output=True).stdout
        return signing_input + "." + _b64url(sig)

    async def token(self, request: web.Request) -> web.Response:
        user = None
        auth = request.headers.get("Authorization", "")
        if auth.startswith("Basic "):
            name, _, password = base64.b64decode(auth[6:]).decode().partition(":")
            if self.users.get(name) != password:
                return web.json_response({"details": "bad credentials"}, status=401)
            user = name
        scopes = request.query.getall("scope", [])
        self.requests.append((user, scopes))
        access = []
        for scope in scopes if user else []:
            kind, _, rest = scope.partition(":")
            repo, _, actions = rest.rpartition(":")
            access.append({"type": kind, "name": repo, "actions": actions.split(",")})
        now = int(time.time())
        claims = {"iss": self.ISSUER, "sub": user or "", "aud": request.query.get("service"), "exp": now + 300,
                  "nbf": now - 10, "iat": now, "jti": secrets.token_hex(8), "access": access}
        return web.json_response({"token": self._sign(claims), "expires_in": 300})


@pytest.fixture
def registry(tmp_path):
    if REGISTRY_BIN is None:
        pytest.skip(needs_registry.kwargs["reason"])
    reg = Registry(tmp_path / "registry").start()
    yield reg
    reg.stop()


@pytest.fixture
def auth_registry(tmp_path):
    """A registry with token auth, its token server and the one user's credentials."""
    if REGISTRY_BIN is None:
        pytest.skip(needs_registry.kwargs["reason"])
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is needed to sign registry tokens (apt-get install openssl)")
    tokens = TokenServer(tmp_path / "tokens", {"me": "s3cret"}).start()
    reg = Registry(tmp_path / "registry", auth=tokens.registry_auth()).start()
    yield reg, tokens, {reg.host: Credential("me", "s3cret")}
    reg.stop()
    tokens.stop()


def seed_model(store: Store, name: str, model_bytes: bytes, extra_text: str | None = None) -> Manifest:
    """Writes a model (a raw layer, optionally a template layer, a config) into ``store``."""
    digest, size = store.add_blob_bytes(model_bytes)
    layers = [Layer(MEDIA_MODEL, digest, size)]
    if extra_text is not None:
        layers.append(Layer(MEDIA_TEMPLATE, *store.add_blob_bytes(extra_text.encode())))
    config = store.add_json_blob({"model_format": "gguf", "rootfs": {"type": "layers",
                                                                     "diff_ids": [x.digest for x in layers]}})
    manifest = Manifest(Layer(MEDIA_CONFIG, *config), layers)
    store.write_manifest(ModelName.parse(name), manifest)
    return manifest


def run(coro):
    return asyncio.run(coro)


def pull(store: Store, name: str, **kw) -> list[dict]:
    events: list[dict] = []
    run(pull_model(store, ModelName.parse(name), events.append, insecure=True, **kw))
    return events


def push(store: Store, name: str, **kw) -> list[dict]:
    events: list[dict] = []
    run(push_model(store, ModelName.parse(name), events.append, insecure=True, **kw))
    return events


# ---- pure functions -------------------------------------------------------------------------------

def test_parse_challenge():
    scheme, params = parse_challenge(
        'Bearer realm="https://auth.example/token",service="registry.example",'
        'scope="repository:me/tiny:pull,push repository:me/other:pull"')
    assert scheme == "bearer"
    assert params == {"realm": "https://auth.example/token", "service": "registry.example",
                      "scope": "repository:me/tiny:pull,push repository:me/other:pull"}
    assert parse_challenge('Basic realm="Registry Realm"') == ("basic", {"realm": "Registry Realm"})


def test_credentials_from_env_and_docker_config(tmp_path, monkeypatch):
    assert parse_auth_env("localhost:5000=me:pa:ss, ghcr.io=bob:tok") == {
        "localhost:5000": Credential("me", "pa:ss"), "ghcr.io": Credential("bob", "tok")}
    with pytest.raises(ValueError):
        parse_auth_env("localhost:5000=nopassword")
    config = {"auths": {"https://index.docker.io/v1/": {"auth": base64.b64encode(b"al:pw").decode()},
                        "reg.example:5000": {"username": "u", "password": "p"},
                        "tok.example": {"registrytoken": "abc"}}}
    assert parse_docker_config(config) == {"index.docker.io": Credential("al", "pw"),
                                           "reg.example:5000": Credential("u", "p"),
                                           "tok.example": Credential("", "", "abc")}
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    from registry.oci import CredentialSource, load_credentials
    creds = load_credentials("reg.example:5000=env:wins", path)
    assert CredentialSource("reg.example:5000=env:wins", path).load() == creds
    assert creds["reg.example:5000"] == Credential("env", "wins")
    assert creds["index.docker.io"] == Credential("al", "pw")


def test_parts_tile_the_blob():
    for total in (8 * MiB, 8 * MiB + 1, 100 * MiB, 5 * 1024 * MiB + 7):
        parts = plan_parts(total)
        assert parts[0].offset == 0 and sum(p.size for p in parts) == total
        assert all(a.offset + a.size == b.offset for a, b in zip(parts, parts[1:]))
        assert len(parts) <= 64 and parts[0].size >= 8 * MiB


# ---- against the real registry --------------------------------------------------------------------

@needs_registry
def test_push_then_pull_roundtrip(registry, tmp_path, monkeypatch):
    """Chunked upload of a big blob, ranged parallel download, identical manifest and blobs."""
    monkeypatch.setattr(push_mod, "UPLOAD_CHUNK", 4 * MiB)  # 20 MiB goes up in 5 PATCHes
    src, dst = Store(tmp_path / "src"), Store(tmp_path / "dst")
    name = f"{registry.host}/me/big:v1"
    manifest = seed_model(src, name, os.urandom(20 * MiB), "{{ .Prompt }}")

    events = push(src, name)
    assert events[0] == {"status": "retrieving manifest"} and events[-1] == {"status": "success"}
    assert {"status": "pushing manifest"} in events
    big = manifest.layers[0].digest
    done = [e for e in events if e.get("digest") == big]
    assert done[-1]["completed"] == done[-1]["total"] == 20 * MiB
    assert registry.log_text().count("PATCH /v2/me/big/blobs/uploads/") == 5
    # The registry holds our manifest byte for byte.
    assert registry.manifest_bytes("me/big", "v1") == src.find(ModelName.parse(name)).path.read_bytes()

    events = pull(dst, name)
    assert events[0] == {"status": "pulling manifest"} and events[-1] == {"status": "success"}
    statuses = [e["status"] for e in events if "digest" not in e]
    assert statuses == ["pulling manifest", "verifying sha256 digest", "writing manifest", "success"]
    for layer in (*manifest.layers, manifest.config):
        last = [e for e in events if e.get("digest") == layer.digest][-1]
        assert last == {"status": f"pulling {layer.digest[7:19]}", "digest": layer.digest, "total": layer.size,
                        "completed": layer.size}
        assert dst.blob_path(layer.digest).read_bytes() == src.blob_path(layer.digest).read_bytes()
    pulled = dst.find(ModelName.parse(name))
    assert pulled.path.read_bytes() == src.find(ModelName.parse(name)).path.read_bytes()
    assert partial_files(dst) == []
    # 20 MiB in 8 MiB parts: three ranged requests.
    assert registry.log_text().count(f"GET /v2/me/big/blobs/{big}") == 3

    # Again: nothing to send, nothing to fetch.
    before = registry.log_text()
    push(src, name)
    pull(dst, name)
    after = registry.log_text()[len(before):]
    assert "PATCH" not in after and "PUT /v2/me/big/blobs" not in after and "GET /v2/me/big/blobs/" not in after


@needs_registry
def test_push_mounts_blobs_across_repositories(registry, tmp_path):
    src = Store(tmp_path / "src")
    seed_model(src, f"{registry.host}/me/first", os.urandom(64 * 1024))
    push(src, f"{registry.host}/me/first")
    stored = src.find(ModelName.parse(f"{registry.host}/me/first"))
    src.write_manifest(ModelName.parse(f"{registry.host}/you/second"), stored.manifest)
    before = len(registry.log_text())
    events = push(src, f"{registry.host}/you/second")
    log = registry.log_text()[before:]
    assert events[-1] == {"status": "success"}
    mounts = re.findall(r'"POST /v2/you/second/blobs/uploads/\?mount=sha256:\w+&from=me/first HTTP/1.1" (\d+)', log)
    assert mounts == ["201", "201"]
    assert "PATCH" not in log and "PUT /v2/you/second/blobs" not in log


@needs_registry
def test_pull_errors(registry, tmp_path):
    dst = Store(tmp_path / "dst")
    with pytest.raises(PullError, match="pull model manifest: file does not exist"):
        pull(dst, f"{registry.host}/me/missing")
    assert dst.list_models() == []


@needs_registry
@pytest.mark.parametrize("size", [300 * 1024, 12 * MiB], ids=["small", "ranged"])
def test_corrupted_blob_is_rejected(registry, tmp_path, size):
    src, dst = Store(tmp_path / "src"), Store(tmp_path / "dst")
    name = f"{registry.host}/me/bad"
    manifest = seed_model(src, name, os.urandom(size))
    push(src, name)
    digest = manifest.layers[0].digest
    data = registry.blob_data(digest)
    corrupted = bytearray(data.read_bytes())
    corrupted[size // 2] ^= 0xFF  # same size, one byte off
    data.write_bytes(bytes(corrupted))

    with pytest.raises(PullError, match=f"digest mismatch, file must be downloaded again: want {digest}"):
        pull(dst, name)
    assert not dst.has_blob(digest)
    assert dst.find(ModelName.parse(name)) is None
    assert partial_files(dst) == []
    assert not any(p.name.startswith(".partial") for p in dst.blobs_dir.iterdir())


@needs_registry
def test_dropped_connection_is_resumed_by_range(registry, tmp_path, monkeypatch):
    monkeypatch.setattr(pull_mod, "backoff", lambda attempt, **kw: 0.05)
    src, dst = Store(tmp_path / "src"), Store(tmp_path / "dst")
    name = f"{registry.host}/me/flaky"
    manifest = seed_model(src, name, os.urandom(10 * MiB))
    push(src, name)
    digest = manifest.layers[0].digest
    proxy = Proxy(registry.host, cut_after=3 * MiB).start()
    try:
        transfers = Transfers(streams=1)
        pull(dst, f"{proxy.host}/me/flaky", transfers=transfers)
        run(transfers.close())
    finally:
        proxy.stop()
    assert dst.has_blob(digest)
    ranges = [r for d, r in proxy.blob_gets if d == digest]
    # The cut part was asked again from where its bytes stopped, not from its start.
    starts = sorted(int(r.split("=")[1].split("-")[0]) for r in ranges)
    assert len(starts) == 3, ranges  # parts [0, 8 MiB) and [8, 10 MiB), and the cut one again
    assert starts[0] == 0 and starts[2] == 8 * MiB and 2 * MiB < starts[1] <= 3 * MiB
    assert proxy.blob_bytes[digest] <= 10 * MiB + 1 * MiB  # at most the unflushed buffer again


@needs_registry
def test_cancelled_pull_resumes_from_partial_file(registry, tmp_path):
    src, dst = Store(tmp_path / "src"), Store(tmp_path / "dst")
    name = f"{registry.host}/me/resume"
    total = 24 * MiB
    manifest = seed_model(src, name, os.urandom(total))
    push(src, name)
    digest = manifest.layers[0].digest
    proxy = Proxy(registry.host, rate=16 * MiB).start()
    state = dst.root / PARTIAL_DIR / f"sha256-{digest[7:]}.json"
    try:
        async def interrupted():
            task = asyncio.create_task(pull_model(dst, ModelName.parse(f"{proxy.host}/me/resume"), lambda e: None,
                                                  insecure=True))
            while not state.exists() or sum(p["completed"] for p in json.loads(state.read_text())["parts"]) < 6 * MiB:
                await asyncio.sleep(0.05)
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

        run(interrupted())
        kept = sum(p["completed"] for p in json.loads(state.read_text())["parts"])
        assert 6 * MiB <= kept < total
        assert not dst.has_blob(digest) and dst.find(ModelName.parse(f"{proxy.host}/me/resume")) is None
        # Partial files survive the store's cleanup.
        dst.cleanup()
        assert state.exists()
        first = proxy.blob_bytes[digest]
        proxy.rate = None
        pull(dst, f"{proxy.host}/me/resume")
    finally:
        proxy.stop()
    assert hashlib.sha256(dst.blob_path(digest).read_bytes()).hexdigest() == digest[7:]
    assert proxy.blob_bytes[digest] - first <= total - kept
    assert partial_files(dst) == []


@needs_registry
def test_two_pulls_share_one_download(registry, tmp_path):
    src, dst = Store(tmp_path / "src"), Store(tmp_path / "dst")
    name = f"{registry.host}/me/shared"
    total = 16 * MiB
    manifest = seed_model(src, name, os.urandom(total))
    src.write_manifest(ModelName.parse(name + ":other"), manifest)
    push(src, name)
    push(src, name + ":other")
    digest = manifest.layers[0].digest
    proxy = Proxy(registry.host, rate=64 * MiB).start()
    try:
        async def both():
            transfers = Transfers()
            a, b = [], []
            await asyncio.gather(
                pull_model(dst, ModelName.parse(f"{proxy.host}/me/shared"), a.append, insecure=True, transfers=transfers),
                pull_model(dst, ModelName.parse(f"{proxy.host}/me/shared:other"), b.append, insecure=True,
                           transfers=transfers))
            await transfers.close()
            return a, b

        a, b = run(both())
    finally:
        proxy.stop()
    assert a[-1] == b[-1] == {"status": "success"}
    assert proxy.blob_bytes[digest] == total  # fetched once
    assert [e for e in b if e.get("digest") == digest][-1]["completed"] == total


@needs_registry
def test_bearer_token_auth(auth_registry, tmp_path):
    registry, tokens, creds = auth_registry
    src, dst = Store(tmp_path / "src"), Store(tmp_path / "dst")
    name = f"{registry.host}/me/private"
    manifest = seed_model(src, name, os.urandom(9 * MiB))

    with pytest.raises(PullError, match="unauthorized"):
        push(src, name, credentials={})  # anonymous: the token grants nothing
    push(src, name, credentials=creds)
    with pytest.raises(PullError, match="unauthorized"):
        pull(dst, name, credentials={})
    with pytest.raises(PullError, match="unauthorized"):
        pull(dst, name, credentials={registry.host: Credential("me", "wrong")})
    pull(dst, name, credentials=creds)
    assert dst.find(ModelName.parse(name)).manifest == manifest
    # The registry lists a scope's actions in Go map order: "pull,push" or "push,pull".
    asked = [(user, {(scope.rpartition(":")[0], frozenset(scope.rpartition(":")[2].split(",")))
                     for scope in scopes}) for user, scopes in tokens.requests]
    assert any(user == "me" and ("repository:me/private", frozenset({"pull", "push"})) in scopes
               for user, scopes in asked)
    # The pull's token: asked for with pull scope, or the push's (pull,push) token still valid and reused.
    assert any(user == "me" and any(repo == "repository:me/private" and "pull" in actions
                                    for repo, actions in scopes) for user, scopes in asked)


@needs_registry
def test_two_processes_on_one_store_download_a_blob_once(registry, tmp_path):
    """The partial file's lock: a second process waits for the first instead of writing it too."""
    src, dst = Store(tmp_path / "src"), tmp_path / "dst"
    total = 16 * MiB
    manifest = seed_model(src, f"{registry.host}/me/twice", os.urandom(total))
    push(src, f"{registry.host}/me/twice")
    digest = manifest.layers[0].digest
    proxy = Proxy(registry.host, rate=16 * MiB).start()
    script = ("import asyncio, sys\nfrom registry import ModelName, Store\nfrom registry.pull import pull_model\n"
              "asyncio.run(pull_model(Store(sys.argv[1]), ModelName.parse(sys.argv[2]), lambda e: None, insecure=True))\n")
    from tests.conftest import REPO
    try:
        procs = [subprocess.Popen([sys.executable, "-c", script, str(dst), f"{proxy.host}/me/twice"], cwd=REPO,
                                  stderr=subprocess.PIPE, text=True) for _ in range(2)]
        errors = [p.communicate(timeout=60)[1] for p in procs]
    finally:
        proxy.stop()
    assert [p.returncode for p in procs] == [0, 0], errors
    assert proxy.blob_bytes[digest] == total
    assert Store(dst).has_blob(digest) and partial_files(Store(dst)) == []
