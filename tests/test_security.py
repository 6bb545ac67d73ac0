"""API keys, CORS and the Host check against the real daemon (and the CLI passing LM_API_KEY)."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request

import pytest

from runner.server.security import OriginPolicy
from tests.conftest import Daemon

KEY1 = "k1-" + "a" * 40
KEY2 = "k2-" + "b" * 40
WRONG = "wrong-" + "c" * 40


def call(d: Daemon, method: str, path: str, headers: dict | None = None, body=None):
    """(status, headers, parsed body) without raising on 4xx."""
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(d.url + path, data=data, method=method, headers=headers or {})
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            status, hdrs, raw = resp.status, resp.headers, resp.read()
    except urllib.error.HTTPError as exc:
        status, hdrs, raw = exc.code, exc.headers, exc.read()
    text = raw.decode(errors="replace")
    try:
        parsed = json.loads(text) if text.strip() else None
    except json.JSONDecodeError:
        parsed = text
    return status, hdrs, parsed


@pytest.fixture(scope="module")
def keyed(tmp_path_factory, tiny_gguf):
    d = Daemon(tmp_path_factory.mktemp("auth-models"), {"LM_API_KEYS": f"{KEY1}, {KEY2}"}).start()
    d.env["LM_API_KEY"] = KEY1
    status = d.cli("create", "tiny", "-f", str(_modelfile(tiny_gguf)))
    assert status.returncode == 0, status.stderr
    yield d
    d.stop()


def _modelfile(gguf) -> object:
    path = gguf.parent / "Modelfile.auth"
    path.write_text(f"FROM {gguf}\n")
    return path


# ---------------------------------------------------------------- API keys

def test_auth_is_off_by_default(daemon):
    status, _, _ = call(daemon, "GET", "/api/tags")
    assert status == 200


@pytest.mark.parametrize("method,path", [("GET", "/"), ("HEAD", "/"), ("GET", "/api/version"),
                                         ("HEAD", "/api/version")])
def test_health_routes_need_no_key(keyed, method, path):
    status, _, _ = call(keyed, method, path)
    assert status == 200


@pytest.mark.parametrize("method,path,body", [
    ("GET", "/api/tags", None), ("GET", "/api/ps", None), ("POST", "/api/show", {"model": "tiny"}),
    ("POST", "/api/generate", {"model": "tiny", "prompt": "hi", "stream": False}),
    ("DELETE", "/api/delete", {"model": "tiny"}), ("HEAD", "/api/blobs/sha256:" + "0" * 64, None),
    ("GET", "/metrics", None), ("GET", "/openapi.json", None), ("GET", "/api/nope", None),
    ("POST", "/api/pull", {"model": "tiny"}), ("POST", "/api/tokenize", {"model": "tiny", "content": "hi"}),
])
def test_every_other_route_needs_a_key(keyed, method, path, body):
    for headers in ({}, {"Authorization": f"Bearer {WRONG}"}, {"Authorization": KEY1}, {"X-Api-Key": WRONG},
                    {"Authorization": "Basic " + KEY1}):
        status, hdrs, answer = call(keyed, method, path, headers, body)
        assert status == 401, (headers, status)
        assert hdrs.get("WWW-Authenticate", "").startswith("Bearer")
        if method != "HEAD":
            assert "unauthorized" in answer["error"]
    status, _, body = call(keyed, "GET", "/api/tags", {"Authorization": f"Bearer {KEY1}"})
    assert any(m["name"].startswith("tiny") for m in body["models"])  # the refused delete deleted nothing


def test_each_configured_key_works(keyed):
    for headers in ({"Authorization": f"Bearer {KEY1}"}, {"Authorization": f"bearer {KEY2}"}, {"X-Api-Key": KEY2}):
        status, _, body = call(keyed, "GET", "/api/tags", headers)
        assert status == 200 and any(m["name"].startswith("tiny") for m in body["models"])
    status, _, body = call(keyed, "POST", "/api/generate", {"Authorization": f"Bearer {KEY2}"},
                           {"model": "tiny", "prompt": "hi", "stream": False, "options": {"num_predict": 3}})
    assert status == 200 and body["done"]


def test_error_shapes_follow_the_api(keyed):
    status, _, body = call(keyed, "GET", "/v1/models")
    assert status == 401 and body["error"]["type"] == "authentication_error"
    status, _, body = call(keyed, "POST", "/v1/messages", body={"model": "tiny", "max_tokens": 4, "messages": []})
    assert status == 401 and body["type"] == "error" and body["error"]["type"] == "authentication_error"
    status, _, body = call(keyed, "GET", "/api/tags")
    assert status == 401 and set(body) == {"error"}


def test_sdk_clients_pass_keys(keyed):
    import ollama
    import openai

    models = ollama.Client(host=keyed.url, headers={"Authorization": f"Bearer {KEY1}"}).list()
    assert models.models
    with pytest.raises(ollama.ResponseError) as err:
        ollama.Client(host=keyed.url).list()
    assert err.value.status_code == 401
    client = openai.OpenAI(base_url=keyed.url + "/v1", api_key=KEY2, max_retries=0)
    assert client.models.list().data
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=keyed.url + "/v1", api_key=WRONG, max_retries=0).models.list()


def test_cli_sends_lm_api_key(keyed):
    result = keyed.cli("list")
    assert result.returncode == 0 and "tiny" in result.stdout, result.stderr
    env = dict(keyed.env)
    env.pop("LM_API_KEY")
    env.pop("OLLAMA_API_KEY", None)
    saved, keyed.env = keyed.env, env
    try:
        result = keyed.cli("list")
    finally:
        keyed.env = saved
    assert result.returncode != 0 and "unauthorized" in (result.stderr + result.stdout).lower()


def test_keys_never_reach_the_log(keyed):
    call(keyed, "GET", "/api/tags", {"Authorization": f"Bearer {WRONG}"})
    call(keyed, "GET", "/api/tags", {"Authorization": f"Bearer {KEY1}"})
    log = keyed.log_path.read_text(errors="replace")
    assert "invalid API key" in log or "API key for GET /api/tags" in log
    for secret in (KEY1, KEY2, WRONG, "a" * 20, "c" * 20):
        assert secret not in log


def test_keys_file_is_reloaded_when_it_changes(make_daemon, tmp_path):
    keys = tmp_path / "keys"
    keys.write_text("# team keys\n" + KEY1 + "\n\n")
    d = make_daemon({"LM_API_KEYS_FILE": str(keys)})
    assert call(d, "GET", "/api/tags", {"Authorization": f"Bearer {KEY1}"})[0] == 200
    assert call(d, "GET", "/api/tags", {"Authorization": f"Bearer {KEY2}"})[0] == 401
    keys.write_text(KEY2 + "\n")
    time.sleep(1.2)  # the file is looked at no more than once a second
    assert call(d, "GET", "/api/tags", {"Authorization": f"Bearer {KEY2}"})[0] == 200
    assert call(d, "GET", "/api/tags", {"Authorization": f"Bearer {KEY1}"})[0] == 401
    keys.unlink()  # fail closed: no readable file, no file keys
    time.sleep(1.2)
    assert call(d, "GET", "/api/tags", {"Authorization": f"Bearer {KEY2}"})[0] == 401
    assert call(d, "GET", "/api/version")[0] == 200


def test_non_loopback_without_keys_warns(tmp_path_factory):
    d = Daemon(tmp_path_factory.mktemp("bind-all"))
    d.env["LM_HOST"] = f"0.0.0.0:{d.port}"
    d.start()
    try:
        log = d.log_path.read_text()
        assert "no API keys" in log and "docs/security.md" in log
        # Bound to every address, the Host check is off (a LAN name is expected); loopback still answers.
        assert call(d, "GET", "/api/tags", {"Host": "lm.example.org"})[0] == 200
    finally:
        d.stop()


# ---------------------------------------------------------------- CORS

ALLOWED = ["http://localhost", "http://localhost:3000", "https://localhost:8443", "http://127.0.0.1:5173",
           "https://127.0.0.1", "http://0.0.0.0:8080", "app://obsidian.md", "file://", "tauri://localhost",
           "vscode-webview://abc123", "vscode-file://vscode-app", "http://[::1]:8080"]
REFUSED = ["http://evil.example", "https://localhost.evil.example", "http://localhost.evil.example:3000",
           "http://127.0.0.1.evil.example", "null", "chrome-extension://abcdef", "http://192.168.1.20:3000"]


def test_origin_policy_defaults():
    policy = OriginPolicy()
    for origin in ALLOWED:
        assert policy.allows(origin), origin
    for origin in REFUSED:
        assert not policy.allows(origin), origin
    extra = OriginPolicy(["https://chat.example.com", "chrome-extension://*"])
    assert extra.allows("https://chat.example.com") and extra.allows("chrome-extension://abcdef")
    assert extra.allows("http://localhost:3000") and not extra.allows("https://evil.example")
    assert OriginPolicy(["*"]).allows("https://anything.example")


@pytest.mark.parametrize("origin", ALLOWED)
def test_local_origins_are_allowed(daemon, origin):
    status, hdrs, _ = call(daemon, "GET", "/api/tags", {"Origin": origin})
    assert status == 200
    assert hdrs["Access-Control-Allow-Origin"] == origin and "Origin" in hdrs.get("Vary", "")
    status, hdrs, _ = call(daemon, "OPTIONS", "/api/chat", {
        "Origin": origin, "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type,authorization"})
    assert status == 204
    assert hdrs["Access-Control-Allow-Origin"] == origin
    assert "POST" in hdrs["Access-Control-Allow-Methods"]
    assert "authorization" in hdrs["Access-Control-Allow-Headers"].lower()


@pytest.mark.parametrize("origin", REFUSED)
def test_other_origins_are_refused(daemon, origin):
    status, hdrs, body = call(daemon, "GET", "/api/tags", {"Origin": origin})
    assert status == 403 and "origin not allowed" in body["error"]
    assert "Access-Control-Allow-Origin" not in hdrs
    status, _, _ = call(daemon, "OPTIONS", "/api/chat", {"Origin": origin, "Access-Control-Request-Method": "POST"})
    assert status == 403


def test_lm_origins_extends_the_defaults(make_daemon):
    d = make_daemon({"LM_ORIGINS": "https://chat.example.com, chrome-extension://*"})
    for origin in ("https://chat.example.com", "chrome-extension://abcdef", "http://localhost:3000"):
        status, hdrs, _ = call(d, "GET", "/api/version", {"Origin": origin})
        assert status == 200 and hdrs["Access-Control-Allow-Origin"] == origin
    assert call(d, "GET", "/api/tags", {"Origin": "https://chat.example.com.evil.example"})[0] == 403


def test_preflight_needs_no_key_but_the_request_does(keyed):
    origin = "http://localhost:3000"
    status, hdrs, _ = call(keyed, "OPTIONS", "/api/tags", {"Origin": origin, "Access-Control-Request-Method": "GET",
                                                         "Access-Control-Request-Headers": "authorization"})
    assert status == 204 and hdrs["Access-Control-Allow-Origin"] == origin
    status, hdrs, _ = call(keyed, "GET", "/api/tags", {"Origin": origin})
    assert status == 401 and hdrs["Access-Control-Allow-Origin"] == origin  # the page can read the 401
    status, hdrs, _ = call(keyed, "GET", "/api/tags", {"Origin": origin, "Authorization": f"Bearer {KEY1}"})
    assert status == 200 and hdrs["Access-Control-Allow-Origin"] == origin


def test_streamed_answers_carry_cors_headers(daemon, tiny):
    req = urllib.request.Request(daemon.url + "/api/generate", method="POST", headers={
        "Origin": "http://localhost:3000", "Content-Type": "application/json"},
        data=json.dumps({"model": tiny, "prompt": "hi", "options": {"num_predict": 3}}).encode())
    with urllib.request.urlopen(req, timeout=60) as resp:
        assert resp.headers["Content-Type"].startswith("application/x-ndjson")
        assert resp.headers["Access-Control-Allow-Origin"] == "http://localhost:3000"
        assert resp.headers["X-Request-Id"]
        lines = [json.loads(x) for x in resp.read().splitlines() if x.strip()]
    assert lines[-1]["done"]


# ---------------------------------------------------------------- Host header (DNS rebinding)

@pytest.mark.parametrize("host,allowed", [
    ("localhost", True), ("127.0.0.1", True), ("[::1]", True), ("my-box.local", True), ("lm.internal", True),
    ("app.localhost", True), ("192.168.1.9", True), ("10.0.0.2", True),
    ("evil.example", False), ("localhost.evil.example", False), ("8.8.8.8", False),
])
def test_host_header_check_while_on_loopback(daemon, host, allowed):
    status, _, body = call(daemon, "GET", "/api/tags", {"Host": f"{host}:{daemon.port}"})
    assert status == (200 if allowed else 403), body
    if not allowed:
        assert body["error"] == "host not allowed"
