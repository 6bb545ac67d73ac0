"""Model management through the real daemon: the official ollama client, raw HTTP and bad input."""

from __future__ import annotations

import hashlib
import json
import os

import ollama
import pytest

from modelfiles import parse_modelfile
from tests.gguf_factory import write_tiny_gguf


def test_root_and_version(daemon):
    assert daemon.get("/") == (200, "lm is running")
    assert daemon.request("HEAD", "/")[0] == 200
    status, body = daemon.get("/api/version")
    assert status == 200 and body["version"]


def test_ollama_client_create_list_show_copy_delete(daemon, tiny_gguf):
    client = ollama.Client(host=daemon.url)
    digest = client.create_blob(tiny_gguf)
    assert digest == "sha256:" + hashlib.sha256(tiny_gguf.read_bytes()).hexdigest()
    progress = list(client.create(model="Client-Model:v1", files={"tiny.gguf": digest}, system="Be brief.",
                                  parameters={"temperature": 0.5, "stop": ["</s>", "END"]}, stream=True))
    assert progress[-1].status == "success"

    names = [m.model for m in client.list().models]
    assert "Client-Model:v1" in names
    shown = client.show("client-model:V1")  # names match case-insensitively
    assert shown.details.family == "llama" and shown.details.format == "gguf"
    assert shown.modelinfo["general.architecture"] == "llama"
    assert "SYSTEM Be brief." in shown.modelfile
    assert daemon.post("/api/show", {"model": "client-model:v1"})[1]["system"] == "Be brief."
    assert "completion" in shown.capabilities
    assert 'stop' in shown.parameters and '"END"' in shown.parameters

    client.copy("client-model:v1", "client-copy")
    assert "client-copy:latest" in [m.model for m in client.list().models]
    client.delete("client-model:v1")
    names = [m.model for m in client.list().models]
    assert "Client-Model:v1" not in names and "client-copy:latest" in names
    # The copy shares every blob with the deleted model: it must still be whole.
    assert "SYSTEM Be brief." in client.show("client-copy").modelfile
    client.delete("client-copy")


def test_unknown_model_is_404(daemon):
    for path, body in (("/api/show", {"model": "nope"}), ("/api/generate", {"model": "nope", "prompt": "x"}),
                       ("/api/chat", {"model": "nope", "messages": [{"role": "user", "content": "x"}]}),
                       ("/api/copy", {"source": "nope", "destination": "other"})):
        status, err = daemon.post(path, body)
        assert status == 404, path
        assert "nope" in err["error"] and "not found" in err["error"]
    status, err = daemon.request("DELETE", "/api/delete", {"model": "nope"})
    assert status == 404 and "not found" in err["error"]
    with pytest.raises(ollama.ResponseError) as exc:
        ollama.Client(host=daemon.url).show("nope")
    assert exc.value.status_code == 404


@pytest.mark.parametrize("path", ["/api/show", "/api/create", "/api/copy", "/api/generate", "/api/chat"])
def test_malformed_json_is_400(daemon, path):
    status, body = daemon.request("POST", path, data=b'{"model": ', timeout=10)
    assert status == 400 and "error" in body


def test_missing_fields_are_400(daemon):
    assert daemon.post("/api/show", {})[0] == 400
    assert daemon.post("/api/copy", {"source": "a"})[0] == 400
    status, body = daemon.post("/api/create", {"model": "x"})
    assert status == 400 and "from" in body["error"]
    assert daemon.post("/api/generate", {"prompt": "hi"})[0] == 400


@pytest.mark.parametrize("name", ["bad name", "a//b", "../../etc/passwd", "x:", ":tag", "a/b/c/d:e", "m:" + "t" * 200])
def test_invalid_names_are_400(daemon, name):
    status, body = daemon.post("/api/show", {"model": name})
    assert status == 400, body
    assert body["error"]


def test_blob_upload_checks_digest_and_leaves_nothing(daemon):
    data = b"not what the digest says"
    wrong = "sha256:" + "0" * 64
    before = set(os.listdir(daemon.models_dir / "blobs"))
    status, body = daemon.request("POST", f"/api/blobs/{wrong}", data=data)
    assert status == 400 and "digest" in body["error"]
    assert set(os.listdir(daemon.models_dir / "blobs")) == before  # no blob, no partial file
    assert daemon.request("HEAD", f"/api/blobs/{wrong}")[0] == 404
    for bad in ("sha256:xyz", "md5:" + "0" * 32, "sha256:" + "A" * 64):
        assert daemon.request("HEAD", f"/api/blobs/{bad}")[0] == 400
        assert daemon.request("POST", f"/api/blobs/{bad}", data=b"x")[0] == 400
    # A traversal attempt never reaches a file: the router or the digest check refuses it.
    assert daemon.request("POST", "/api/blobs/sha256:..%2F..%2Fx", data=b"x")[0] in (400, 404)
    good = "sha256:" + hashlib.sha256(data).hexdigest()
    assert daemon.request("POST", f"/api/blobs/{good}", data=data)[0] == 201
    assert daemon.request("HEAD", f"/api/blobs/{good}")[0] == 200


def test_garbage_gguf_is_a_clear_error(daemon, tmp_path):
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"GGUF" + os.urandom(200))
    digest = daemon.upload_blob(junk)
    status, body = daemon.post("/api/create", {"model": "junk", "files": {"junk.gguf": digest}, "stream": False})
    assert status == 400 and "invalid model file" in body["error"]
    assert daemon.post("/api/show", {"model": "junk"})[0] == 404
    # Streaming form: the error is the last line.
    status, lines = daemon.post("/api/create", {"model": "junk", "files": {"junk.gguf": digest}})
    assert "invalid model file" in lines[-1]["error"]


def test_bad_template_and_parameters_are_400(daemon, tiny_gguf):
    digest = daemon.upload_blob(tiny_gguf)
    base = {"model": "bad", "files": {"t.gguf": digest}, "stream": False}
    status, body = daemon.post("/api/create", {**base, "template": "{{ if .Prompt }}unterminated"})
    assert status == 400 and "template" in body["error"]
    status, body = daemon.post("/api/create", {**base, "parameters": {"temperature": "hot"}})
    assert status == 400 and "temperature" in body["error"]
    status, body = daemon.post("/api/create", {"model": "bad", "from": "missing-model", "stream": False})
    assert status == 404
    assert daemon.post("/api/show", {"model": "bad"})[0] == 404


def test_cli_create_list_show_cp_rm(daemon, tiny_gguf, tmp_path):
    mf = tmp_path / "Modelfile"
    mf.write_text(f'''# a test model
FROM {tiny_gguf}
PARAMETER temperature 0.3
PARAMETER stop "<|end|>"
PARAMETER stop "User:"
SYSTEM """You are
a tester."""
TEMPLATE """{{{{ if .System }}}}{{{{ .System }}}} {{{{ end }}}}{{{{ .Prompt }}}}"""
MESSAGE user Hi
MESSAGE assistant Hello!
LICENSE "MIT"
''')
    r = daemon.cli("create", "cli-model", "-f", str(mf))
    assert r.returncode == 0, r.stderr
    assert "success" in r.stdout
    r = daemon.cli("list")
    assert r.returncode == 0 and "cli-model:latest" in r.stdout and "NAME" in r.stdout
    names = lambda out: sorted(line.split()[0] for line in out.splitlines()[1:])  # noqa: E731
    assert names(daemon.cli("ls").stdout) == names(r.stdout)

    r = daemon.cli("show", "cli-model", "--modelfile")
    assert r.returncode == 0, r.stderr
    written = parse_modelfile(r.stdout)
    original = parse_modelfile(mf.read_text())
    assert written.parameters == original.parameters
    assert (written.system, written.template, written.messages, written.license) == (
        original.system, original.template, original.messages, original.license)
    # The written Modelfile creates the same model again (round trip through the daemon).
    mf2 = tmp_path / "Modelfile2"
    mf2.write_text(r.stdout)
    assert daemon.cli("create", "cli-model-2", "-f", str(mf2)).returncode == 0
    assert daemon.cli("show", "cli-model-2", "--modelfile").stdout.split("\n", 4)[4] == r.stdout.split("\n", 4)[4]

    assert daemon.cli("show", "cli-model", "--system").stdout.strip() == "You are\na tester."
    assert daemon.cli("show", "cli-model", "--license").stdout.strip() == "MIT"
    assert "temperature" in daemon.cli("show", "cli-model", "--parameters").stdout
    assert ".Prompt" in daemon.cli("show", "cli-model", "--template").stdout
    summary = daemon.cli("show", "cli-model").stdout
    assert "llama" in summary and "Parameters" in summary

    assert daemon.cli("cp", "cli-model", "cli-model-copy").returncode == 0
    assert daemon.cli("rm", "cli-model", "cli-model-2").returncode == 0
    listing = daemon.cli("list").stdout
    assert "cli-model-copy" in listing and "cli-model:latest" not in listing
    assert daemon.cli("rm", "cli-model-copy").returncode == 0


def test_cli_errors_are_one_line_and_nonzero(daemon, tmp_path):
    bad = tmp_path / "Modelfile"
    bad.write_text("FROM x\nPARAMETER temperature\n")
    r = daemon.cli("create", "m", "-f", str(bad))
    assert r.returncode != 0 and "line 2" in r.stderr
    r = daemon.cli("create", "m", "-f", str(tmp_path / "missing"))
    assert r.returncode != 0 and "Modelfile" in r.stderr
    r = daemon.cli("show", "does-not-exist")
    assert r.returncode != 0 and r.stderr.strip().count("\n") == 0 and "not found" in r.stderr
    r = daemon.cli("rm", "bad name!")
    assert r.returncode != 0 and "invalid" in r.stderr
    r = daemon.cli("--version")
    assert r.returncode == 0 and "lm version" in r.stdout


def test_rm_keeps_blobs_used_by_another_model(daemon, tmp_path):
    gguf = write_tiny_gguf(tmp_path / "own.gguf", seed=7)  # a blob no other test's model shares
    daemon.create_from_gguf("shared-a", gguf, system="A")
    daemon.create_from_gguf("shared-b", gguf, system="B")
    model_blob = daemon.models_dir / "blobs" / ("sha256-" + hashlib.sha256(gguf.read_bytes()).hexdigest())
    assert daemon.request("DELETE", "/api/delete", {"model": "shared-a"})[0] == 200
    assert model_blob.exists()
    status, body = daemon.post("/api/show", {"model": "shared-b"})
    assert status == 200 and body["system"] == "B"
    assert daemon.request("DELETE", "/api/delete", {"model": "shared-b"})[0] == 200
    assert not model_blob.exists()


def test_existing_ollama_store_is_listed_as_is(make_daemon, tiny_gguf, tmp_path):
    """A store laid out by Ollama (blobs + manifests) is read without any conversion."""
    root = tmp_path / "ollama-models"
    (root / "blobs").mkdir(parents=True)

    def blob(data: bytes) -> tuple[str, int]:
        hexd = hashlib.sha256(data).hexdigest()
        (root / "blobs" / f"sha256-{hexd}").write_bytes(data)
        return f"sha256:{hexd}", len(data)

    model_digest, model_size = blob(tiny_gguf.read_bytes())
    tmpl_digest, tmpl_size = blob(b"{{ .Prompt }}")
    cfg_digest, cfg_size = blob(json.dumps({"model_format": "gguf", "model_family": "llama",
                                            "model_families": ["llama"], "model_type": "1M",
                                            "file_type": "F32"}).encode())
    manifest = {
        "schemaVersion": 2, "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
        "config": {"mediaType": "application/vnd.docker.container.image.v1+json", "digest": cfg_digest,
                   "size": cfg_size},
        "layers": [{"mediaType": "application/vnd.ollama.image.model", "digest": model_digest, "size": model_size},
                   {"mediaType": "application/vnd.ollama.image.template", "digest": tmpl_digest,
                    "size": tmpl_size}],
    }
    mdir = root / "manifests" / "registry.ollama.ai" / "library" / "oldmodel"
    mdir.mkdir(parents=True)
    (mdir / "7b").write_text(json.dumps(manifest))
    d = make_daemon(models_dir=root)
    status, tags = d.get("/api/tags")
    assert [m["name"] for m in tags["models"]] == ["oldmodel:7b"]
    assert tags["models"][0]["size"] == model_size + tmpl_size + cfg_size
    status, shown = d.post("/api/show", {"model": "oldmodel:7b"})
    assert status == 200 and shown["template"] == "{{ .Prompt }}"


def test_cli_create_from_blob_digest_and_from_model(daemon, tiny_gguf, tmp_path):
    digest = daemon.upload_blob(tiny_gguf)
    mf = tmp_path / "Modelfile"
    mf.write_text(f"FROM {digest}\nSYSTEM from a digest\n")
    r = daemon.cli("create", "from-digest", "-f", str(mf))
    assert r.returncode == 0, r.stderr
    mf.write_text("FROM from-digest\nPARAMETER num_ctx 512\n")
    r = daemon.cli("create", "from-model", "-f", str(mf))
    assert r.returncode == 0, r.stderr
    status, shown = daemon.post("/api/show", {"model": "from-model"})
    assert shown["system"] == "from a digest" and "num_ctx" in shown["parameters"]
    mf.write_text("FROM ./no-such-file.gguf\n")
    r = daemon.cli("create", "x", "-f", str(mf))
    assert r.returncode != 0 and "no such file" in r.stderr
    for name in ("from-digest", "from-model"):
        daemon.request("DELETE", "/api/delete", {"model": name})
