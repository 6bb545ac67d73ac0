"""HTTP_PROXY / HTTPS_PROXY / NO_PROXY are honoured by pulls and pushes, as Ollama honours them: a real
daemon, the real CLI, a real OCI registry on 127.0.0.1 and a forward proxy of the test's own that notes
every request passing through it (tests/forward_proxy.py)."""

from __future__ import annotations

from tests.forward_proxy import ForwardProxy
from tests.test_registry_oci import needs_registry, registry  # noqa: F401  (fixture)

pytestmark = needs_registry

NO_PROXY_ENV = {"NO_PROXY": "", "no_proxy": ""}  # whatever the machine sets, 127.0.0.1 is proxied here


def clean_env(**env) -> dict:
    return {"HTTP_PROXY": "", "http_proxy": "", "HTTPS_PROXY": "", "https_proxy": "", **NO_PROXY_ENV, **env}


def test_push_and_pull_go_through_http_proxy(make_daemon, registry, tiny_gguf):  # noqa: F811
    name = f"{registry.host}/me/proxied:latest"
    with ForwardProxy() as proxy:
        d = make_daemon(clean_env(HTTP_PROXY=proxy.url, http_proxy=proxy.url))
        d.create_from_gguf(name, tiny_gguf)
        out = d.cli("push", name, "--insecure")
        assert out.returncode == 0, out.stderr
        pushed = list(proxy.requests)
        assert any(line.startswith(f"PUT http://{registry.host}/v2/me/proxied/manifests/latest ") for line in pushed)
        assert any(" http://" + registry.host + "/v2/me/proxied/blobs/uploads/" in line for line in pushed)

        assert d.cli("rm", name).returncode == 0
        out = d.cli("pull", name, "--insecure")
        assert out.returncode == 0, out.stderr
        pulled = proxy.requests[len(pushed):]
        assert any(line.startswith(f"GET http://{registry.host}/v2/me/proxied/manifests/latest ") for line in pulled)
        assert any(f"GET http://{registry.host}/v2/me/proxied/blobs/sha256:" in line for line in pulled)
    status, body = d.post("/api/generate", {"model": name, "prompt": "hi", "stream": False,
                                            "options": {"num_predict": 2}})
    assert status == 200 and body["done"]


def test_no_proxy_bypasses_the_proxy(make_daemon, registry, tiny_gguf):  # noqa: F811
    name = f"{registry.host}/me/direct:latest"
    with ForwardProxy() as proxy:
        d = make_daemon(clean_env(HTTP_PROXY=proxy.url, http_proxy=proxy.url, NO_PROXY="127.0.0.1",
                                  no_proxy="127.0.0.1"))
        d.create_from_gguf(name, tiny_gguf)
        assert d.cli("push", name, "--insecure").returncode == 0
        assert d.cli("rm", name).returncode == 0
        out = d.cli("pull", name, "--insecure")
        assert out.returncode == 0, out.stderr
        assert proxy.requests == []
    assert "GET /v2/me/direct/manifests/latest" in registry.log_text()


def test_https_pull_asks_the_https_proxy_for_a_tunnel(make_daemon, registry, tiny_gguf):  # noqa: F811
    """Without --insecure the pull is https: the client asks HTTPS_PROXY to CONNECT to the registry (whose
    plain http then fails the TLS handshake, so the pull fails, with the proxy having seen it)."""
    with ForwardProxy() as proxy:
        d = make_daemon(clean_env(HTTPS_PROXY=proxy.url, https_proxy=proxy.url))
        out = d.cli("pull", f"{registry.host}/me/tls:latest")
        assert out.returncode != 0
        assert f"CONNECT {registry.host}" in proxy.requests
