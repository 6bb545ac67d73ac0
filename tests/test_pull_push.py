"""`lm push` / `lm pull` and /api/pull, /api/push end to end: real daemons, the real CLI, a real
OCI registry on 127.0.0.1 (see test_registry_oci.py for the registry, proxy and token helpers)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time


from registry import ModelName, Store
from registry.pull import PARTIAL_DIR
from tests.conftest import REPO
from tests.test_registry_oci import (  # noqa: F401  (fixtures)
    MiB, Proxy, auth_registry, needs_registry, push, registry, seed_model,
)

pytestmark = needs_registry


def _manifest_and_blobs(models_dir, name: str) -> tuple[bytes, dict[str, bytes]]:
    store = Store(models_dir)
    stored = store.find(ModelName.parse(name))
    assert stored is not None, f"{name} not in {models_dir}"
    blobs = {d: hashlib.sha256(store.blob_path(d).read_bytes()).hexdigest() for d in stored.manifest.digests()}
    return stored.path.read_bytes(), blobs


def test_push_rm_pull_run(make_daemon, registry, tiny_gguf):
    d = make_daemon()
    name = f"{registry.host}/me/tiny:latest"
    d.create_from_gguf(name, tiny_gguf)
    manifest, blobs = _manifest_and_blobs(d.models_dir, name)
    assert all(digest == f"sha256:{h}" for digest, h in blobs.items())

    out = d.cli("push", name, "--insecure")
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[0] == "retrieving manifest" and out.stdout.splitlines()[-1] == "success"
    assert registry.manifest_bytes("me/tiny", "latest") == manifest

    assert d.cli("rm", name).returncode == 0
    assert not any(Store(d.models_dir).has_blob(digest) for digest in blobs)

    out = d.cli("pull", name, "--insecure")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "pulling manifest" and lines[-3:] == ["verifying sha256 digest", "writing manifest", "success"]
    assert _manifest_and_blobs(d.models_dir, name) == (manifest, blobs)
    tags = d.get("/api/tags")[1]["models"]
    assert [m["name"] for m in tags] == [name]

    status, body = d.post("/api/generate", {"model": name, "prompt": "hello", "stream": False,
                                            "options": {"num_predict": 4, "temperature": 0}})
    assert status == 200 and body["eval_count"] > 0, body

    # What `lm run` does first: pull a model the daemon lacks, and only then.
    from runner.cli.client import Client
    from runner.cli.pull_cmd import pull_if_missing

    assert d.cli("rm", name).returncode == 0
    pull_if_missing(Client(d.url), name, insecure=True)
    assert _manifest_and_blobs(d.models_dir, name) == (manifest, blobs)
    manifests_fetched = registry.log_text().count("GET /v2/me/tiny/manifests/latest")
    pull_if_missing(Client(d.url), name, insecure=True)
    assert registry.log_text().count("GET /v2/me/tiny/manifests/latest") == manifests_fetched

    # Plain http needs --insecure; a model the registry lacks is an error as Ollama words it.
    out = d.cli("pull", name)
    assert out.returncode == 1 and "Error:" in out.stderr
    out = d.cli("pull", f"{registry.host}/me/nothere", "--insecure")
    assert out.returncode == 1 and "pull model manifest: file does not exist" in out.stderr


def test_pull_push_api_shapes(make_daemon, registry, tiny_gguf):
    d = make_daemon()
    assert d.post("/api/pull", {}) == (400, {"error": "model is required"})
    status, body = d.post("/api/pull", {"model": "bad//name"})
    assert status == 400 and "invalid model name" in body["error"]
    assert d.post("/api/pull", {"model": f"http://{registry.host}/me/x"}) == (400, {"error": "insecure protocol http"})

    status, lines = d.post("/api/push", {"model": f"{registry.host}/me/absent", "insecure": True})
    assert status == 200 and lines[0] == {"status": "retrieving manifest"}
    assert "not found" in lines[-1]["error"]

    name = f"{registry.host}/me/shapes"
    d.create_from_gguf(name, tiny_gguf)
    status, body = d.post("/api/push", {"model": name, "insecure": True, "stream": False})
    assert (status, body) == (200, {"status": "success"})
    status, lines = d.post("/api/pull", {"model": name, "insecure": True})
    assert status == 200 and lines[0] == {"status": "pulling manifest"} and lines[-1] == {"status": "success"}
    for line in lines[1:-3]:
        assert set(line) == {"status", "digest", "total", "completed"}
        assert line["status"] == f"pulling {line['digest'][7:19]}" and line["completed"] == line["total"]
    status, body = d.post("/api/pull", {"model": f"{registry.host}/me/nothere", "insecure": True, "stream": False})
    assert status == 500 and body == {"error": "pull model manifest: file does not exist"}


def test_killed_daemon_resumes_pull(make_daemon, registry, tmp_path):
    """Kill -9 the daemon mid-blob; a new daemon on the same store fetches only the missing bytes."""
    total = 48 * MiB
    src = Store(tmp_path / "src")
    manifest = seed_model(src, f"{registry.host}/me/big", os.urandom(total))
    push(src, f"{registry.host}/me/big")
    digest = manifest.layers[0].digest
    proxy = Proxy(registry.host, rate=24 * MiB).start()
    name = f"{proxy.host}/me/big"
    try:
        d = make_daemon({"LM_MAX_TRANSFER_STREAMS": "4"})
        state = d.models_dir / PARTIAL_DIR / f"sha256-{digest[7:]}.json"
        cli = subprocess.Popen([sys.executable, "-m", "runner.cli", "pull", name, "--insecure"], cwd=REPO, env=d.env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.time() + 30
        while time.time() < deadline:
            if state.exists() and sum(p["completed"] for p in json.loads(state.read_text())["parts"]) >= 12 * MiB:
                break
            time.sleep(0.05)
        d.kill()
        _, err = cli.communicate(timeout=30)
        assert cli.returncode == 1 and "Error:" in err
        kept = sum(p["completed"] for p in json.loads(state.read_text())["parts"])
        assert 12 * MiB <= kept < total
        served_before = proxy.blob_bytes[digest]
        assert not Store(d.models_dir).has_blob(digest)

        d2 = make_daemon(models_dir=d.models_dir)  # its startup cleanup must keep the partial file
        assert state.exists()
        proxy.rate = None
        out = d2.cli("pull", name, "--insecure")
        assert out.returncode == 0, out.stderr
    finally:
        proxy.stop()
    refetched = proxy.blob_bytes[digest] - served_before
    assert refetched <= total - kept, (refetched, total, kept)
    assert hashlib.sha256(Store(d2.models_dir).blob_path(digest).read_bytes()).hexdigest() == digest[7:]
    assert not any((d2.models_dir / PARTIAL_DIR).iterdir())
    assert f"resuming download of {digest} at {kept} of {total} bytes" in d2.log_path.read_text()


def test_corrupted_registry_blob_is_rejected(make_daemon, registry, tiny_gguf):
    d = make_daemon()
    name = f"{registry.host}/me/corrupt"
    d.create_from_gguf(name, tiny_gguf)
    assert d.cli("push", name, "--insecure").returncode == 0
    model = Store(d.models_dir).find(ModelName.parse(name)).manifest.layers[0].digest
    assert d.cli("rm", name).returncode == 0
    data = registry.blob_data(model)
    raw = bytearray(data.read_bytes())
    raw[len(raw) // 3] ^= 0x55
    data.write_bytes(bytes(raw))

    status, lines = d.post("/api/pull", {"model": name, "insecure": True})
    assert status == 200
    assert lines[-1]["error"].startswith(f"digest mismatch, file must be downloaded again: want {model}, got sha256:")
    assert not Store(d.models_dir).has_blob(model)
    assert d.get("/api/tags")[1]["models"] == []
    assert d.post("/api/show", {"model": name})[0] == 404


def test_bearer_auth_through_the_daemon(make_daemon, auth_registry, tiny_gguf, tmp_path):
    registry, tokens, _ = auth_registry
    env = {"LM_REGISTRY_AUTH": f"{registry.host}=me:s3cret", "LM_REGISTRY_CONFIG": str(tmp_path / "none.json")}
    d = make_daemon(env)
    name = f"{registry.host}/me/secret"
    d.create_from_gguf(name, tiny_gguf)
    out = d.cli("push", name, "--insecure")
    assert out.returncode == 0, out.stderr
    manifest, blobs = _manifest_and_blobs(d.models_dir, name)
    assert d.cli("rm", name).returncode == 0
    out = d.cli("pull", name, "--insecure")
    assert out.returncode == 0, out.stderr
    assert _manifest_and_blobs(d.models_dir, name) == (manifest, blobs)

    anonymous = make_daemon({"LM_REGISTRY_CONFIG": str(tmp_path / "none.json")})
    out = anonymous.cli("pull", name, "--insecure")
    assert out.returncode == 1 and "unauthorized" in out.stderr
