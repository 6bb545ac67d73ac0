"""`lm pull hf.co/<user>/<repo>[:quant]` against a fake Hugging Face Hub on 127.0.0.1.

The fake serves what a pull asks for (found by logging huggingface_hub's requests):
    GET  /api/models/<repo>/tree/<revision>?recursive=true&expand=false   the file listing (LFS sha256s)
    HEAD /<repo>/resolve/<revision>/<file>                               X-Repo-Commit, ETag, size
    GET  /<repo>/resolve/<revision>/<file>                               the bytes (Range honoured)
and answers 404 to anything else (huggingface_hub also probes /api/agent-harnesses, and copes).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import subprocess
import sys
import time

import pytest
from aiohttp import web

from registry import ModelName, Store
from registry.hf import HFError, HFFile, choose_file
from registry.pull import PARTIAL_DIR
from tests.conftest import REPO
from tests.gguf_factory import write_tiny_gguf
from tests.test_registry_oci import ServerThread

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def chatml_jinja() -> str:
    index = json.loads((REPO / "modelfiles/templates/index.json").read_text())
    return next(entry["template"] for entry in index if entry["name"] == "chatml")


class FakeHub(ServerThread):
    def __init__(self, repos: dict[str, dict], tokens: dict[str, str] | None = None):
        app = web.Application()
        app.router.add_get("/api/models/{ns}/{repo}/tree/{revision}", self.tree)
        app.router.add_route("*", "/{ns}/{repo}/resolve/{revision}/{path:.+}", self.resolve)
        super().__init__(app)
        self.repos = repos  # repo id -> {path: bytes}
        self.tokens = tokens or {}  # repo id -> the token it needs
        self.requests: list[tuple[str, str, str | None, str | None]] = []
        self.rate: float | None = None
        self.bytes_sent = 0

    def _check(self, request: web.Request) -> str:
        repo = f"{request.match_info['ns']}/{request.match_info['repo']}"
        self.requests.append((request.method, request.path, request.headers.get("Range"),
                              request.headers.get("Authorization")))
        needed = self.tokens.get(repo)
        if repo not in self.repos or (needed and request.headers.get("Authorization") != f"Bearer {needed}"):
            raise web.HTTPUnauthorized(headers={"X-Error-Code": "RepoNotFound",
                                                "X-Error-Message": "Repository not found"})
        return repo

    async def tree(self, request: web.Request) -> web.Response:
        repo = self._check(request)
        entries = []
        for path, data in self.repos[repo].items():
            entry = {"type": "file", "oid": hashlib.sha1(data).hexdigest(), "size": len(data), "path": path}
            if path.endswith(".gguf"):
                entry["lfs"] = {"oid": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": 134}
            entries.append(entry)
        return web.json_response(entries)

    async def resolve(self, request: web.Request) -> web.StreamResponse:
        repo = self._check(request)
        data = self.repos[repo].get(request.match_info["path"])
        if data is None:
            raise web.HTTPNotFound(headers={"X-Error-Code": "EntryNotFound", "X-Repo-Commit": COMMIT})
        headers = {"X-Repo-Commit": COMMIT, "ETag": f'"{hashlib.sha256(data).hexdigest()}"',
                   "Accept-Ranges": "bytes", "Content-Type": "application/octet-stream"}
        if request.method == "HEAD":
            return web.Response(headers={**headers, "Content-Length": str(len(data))})
        start, end, status = 0, len(data) - 1, 200
        if request.headers.get("Range", "").startswith("bytes="):
            first, _, last = request.headers["Range"][6:].partition("-")
            start, end, status = int(first), int(last) if last else len(data) - 1, 206
            headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
        resp = web.StreamResponse(status=status, headers={**headers, "Content-Length": str(end + 1 - start)})
        await resp.prepare(request)
        view = memoryview(data)[start:end + 1]
        try:
            for i in range(0, len(view), 64 * 1024):
                chunk = bytes(view[i:i + 64 * 1024])
                await resp.write(chunk)
                self.bytes_sent += len(chunk)
                if self.rate:
                    await asyncio.sleep(len(chunk) / self.rate)
        except ConnectionResetError:
            return resp
        await resp.write_eof()
        return resp


@pytest.fixture(scope="module")
def ggufs(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf-ggufs")
    q4 = write_tiny_gguf(root / "a.gguf", chat_template=chatml_jinja(), seed=1).read_bytes()
    q8 = write_tiny_gguf(root / "b.gguf", chat_template=chatml_jinja(), seed=2).read_bytes()
    return q4, q8


@pytest.fixture(scope="module")
def big_gguf(tmp_path_factory) -> bytes:
    """Big enough (~23 MB) to be fetched in ranged parts."""
    path = tmp_path_factory.mktemp("hf-big") / "big.gguf"
    return write_tiny_gguf(path, n_embd=512, n_ff=1024, seed=3).read_bytes()


@pytest.fixture
def hub(ggufs, big_gguf):
    q4, q8 = ggufs
    server = FakeHub({
        "me/tiny-GGUF": {"tiny.Q4_K_M.gguf": q4, "sub/tiny.Q8_0.gguf": q8, "README.md": b"# tiny\n"},
        "me/private-GGUF": {"private-Q4_K_M.gguf": q8},
        "me/big-GGUF": {"big-Q4_K_M.gguf": big_gguf},
    }, tokens={"me/private-GGUF": "hf_test_secret"}).start()
    yield server
    server.stop()


def hf_env(hub: FakeHub, tmp_path, token: str = "") -> dict:
    return {"HF_ENDPOINT": hub.url, "HF_HOME": str(tmp_path / "hf-home"), "HF_TOKEN": token,
            "HF_HUB_DISABLE_TELEMETRY": "1", "HF_HUB_DISABLE_XET": "1"}


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def test_choose_file():
    files = [HFFile("m-Q4_K_S.gguf", 1, None), HFFile("m-Q4_K_M.gguf", 1, None), HFFile("m-Q8_0.gguf", 1, None),
             HFFile("mmproj-m-f16.gguf", 1, None), HFFile("big/m-Q6_K-00001-of-00002.gguf", 1, None)]
    assert choose_file(files, "latest", "r").path == "m-Q4_K_M.gguf"
    assert choose_file(files, "q8_0", "r").path == "m-Q8_0.gguf"
    assert choose_file(files, "Q4_K_S", "r").path == "m-Q4_K_S.gguf"
    assert choose_file(files, "m-Q8_0.gguf", "r").path == "m-Q8_0.gguf"
    assert choose_file(files[2:4], "latest", "r").path == "m-Q8_0.gguf"  # only one GGUF besides the projector
    with pytest.raises(HFError, match="no GGUF file for 'Q4_K'"):
        choose_file(files, "Q4_K", "r")  # a word of the name, not a prefix
    with pytest.raises(HFError, match="split"):
        choose_file(files, "Q6_K", "r")
    assert choose_file([HFFile("x.Q5_K_M.gguf", 1, None), HFFile("x.Q8_0.gguf", 1, None)], "latest", "r").path \
        == "x.Q5_K_M.gguf"  # no Q4_K_M: the preferred quant present


def test_pull_from_hugging_face(make_daemon, hub, ggufs, tmp_path):
    q4, q8 = ggufs
    d = make_daemon(hf_env(hub, tmp_path))
    out = d.cli("pull", "hf.co/me/tiny-GGUF")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "pulling manifest" and lines[-1] == "success"
    assert f"pulling {sha(q4)[7:19]}: 100% 7.4 MB" in lines and "verifying sha256 digest" in lines

    store = Store(d.models_dir)
    stored = store.find(ModelName.parse("hf.co/me/tiny-GGUF:latest"))
    assert stored.manifest.layers[0].digest == sha(q4)
    assert store.blob_path(sha(q4)).read_bytes() == q4
    routes = {(m, p) for m, p, _, _ in hub.requests}
    assert routes >= {("GET", "/api/models/me/tiny-GGUF/tree/main"),
                      ("HEAD", "/me/tiny-GGUF/resolve/main/tiny.Q4_K_M.gguf"),
                      ("GET", "/me/tiny-GGUF/resolve/main/tiny.Q4_K_M.gguf")}
    # The chat template came from the GGUF (a ChatML Jinja template: Ollama's chatml template).
    status, show = d.post("/api/show", {"model": "hf.co/me/tiny-GGUF"})
    assert status == 200 and "<|im_start|>" in show["template"]
    assert "<|im_end|>" in show["parameters"]
    status, body = d.post("/api/chat", {"model": "hf.co/me/tiny-GGUF", "stream": False,
                                        "messages": [{"role": "user", "content": "hi"}],
                                        "options": {"num_predict": 3}})
    assert status == 200 and body["eval_count"] > 0, body
    assert [m["name"] for m in d.get("/api/tags")[1]["models"]] == ["hf.co/me/tiny-GGUF:latest"]

    # A quant by name (any case), found in a sub-folder; and the file name itself.
    out = d.cli("pull", "hf.co/me/tiny-GGUF:q8_0")
    assert out.returncode == 0, out.stderr
    assert store.find(ModelName.parse("hf.co/me/tiny-GGUF:q8_0")).manifest.layers[0].digest == sha(q8)
    before = len(hub.requests)
    status, lines = d.post("/api/pull", {"model": "huggingface.co/me/tiny-GGUF:tiny.Q8_0.gguf"})
    assert status == 200 and lines[-1] == {"status": "success"}, lines
    # The blob was in the store already: listed, not downloaded again.
    assert [m for m, p, _, _ in hub.requests[before:] if "/resolve/" in p] == []

    out = d.cli("pull", "hf.co/me/tiny-GGUF:Q5_K_M")
    assert out.returncode == 1 and "no GGUF file for 'Q5_K_M'" in out.stderr and "tiny.Q4_K_M.gguf" in out.stderr
    out = d.cli("pull", "hf.co/me/nothing-here")
    assert out.returncode == 1 and "not found" in out.stderr


def test_private_repository_needs_hf_token(make_daemon, hub, ggufs, tmp_path):
    _, q8 = ggufs
    anonymous = make_daemon(hf_env(hub, tmp_path / "a"))
    out = anonymous.cli("pull", "hf.co/me/private-GGUF")
    assert out.returncode == 1 and "HF_TOKEN" in out.stderr

    d = make_daemon(hf_env(hub, tmp_path / "b", token="hf_test_secret"))
    out = d.cli("pull", "hf.co/me/private-GGUF")
    assert out.returncode == 0, out.stderr
    assert Store(d.models_dir).find(ModelName.parse("hf.co/me/private-GGUF")).manifest.layers[0].digest == sha(q8)
    assert {auth for m, p, _, auth in hub.requests if p.startswith("/me/private-GGUF/resolve")} \
        == {"Bearer hf_test_secret"}


def test_file_in_the_hub_cache_is_not_downloaded_again(make_daemon, hub, ggufs, tmp_path):
    from huggingface_hub import hf_hub_download

    q4, _ = ggufs
    hf_hub_download("me/tiny-GGUF", "tiny.Q4_K_M.gguf", endpoint=hub.url, cache_dir=tmp_path / "hf-home" / "hub")
    before = len(hub.requests)
    d = make_daemon(hf_env(hub, tmp_path))
    out = d.cli("pull", "hf.co/me/tiny-GGUF")
    assert out.returncode == 0, out.stderr
    assert Store(d.models_dir).blob_path(sha(q4)).read_bytes() == q4
    assert [p for _, p, _, _ in hub.requests[before:] if "/resolve/" in p] == []


def test_interrupted_hf_download_resumes(make_daemon, hub, big_gguf, tmp_path):
    """Kill -9 the daemon mid-file: a new one fetches only the bytes it lacked."""
    digest = sha(big_gguf)
    hub.rate = 8 * (1 << 20)
    env = {**hf_env(hub, tmp_path), "LM_MAX_TRANSFER_STREAMS": "2"}
    d = make_daemon(env)
    state = d.models_dir / PARTIAL_DIR / f"sha256-{digest[7:]}.json"
    cli = subprocess.Popen([sys.executable, "-m", "runner.cli", "pull", "hf.co/me/big-GGUF"], cwd=REPO, env=d.env,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 30
    while time.time() < deadline:
        if state.exists() and sum(p["completed"] for p in json.loads(state.read_text())["parts"]) >= 4 << 20:
            break
        time.sleep(0.05)
    d.kill()
    cli.communicate(timeout=30)
    assert cli.returncode == 1
    kept = sum(p["completed"] for p in json.loads(state.read_text())["parts"])
    assert 4 << 20 <= kept < len(big_gguf)
    hub.rate = None
    sent_before = hub.bytes_sent

    d2 = make_daemon(env, models_dir=d.models_dir)
    out = d2.cli("pull", "hf.co/me/big-GGUF")
    assert out.returncode == 0, out.stderr
    assert Store(d2.models_dir).blob_path(digest).read_bytes() == big_gguf
    assert hub.bytes_sent - sent_before <= len(big_gguf) - kept
    assert f"resuming download of {digest} at {kept}" in d2.log_path.read_text()
