"""`lm create -q` through llama.cpp's quantizer, and the KV cache settings (LM_KV_CACHE_TYPE,
LM_FLASH_ATTENTION) with the memory estimate checked against what llama.cpp really allocates.

Real daemon, real llama.cpp, tiny F32 llama GGUFs (n_embd 256, so K-quants apply).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time

import pytest

from tests.conftest import REPO, free_port

REFUSED = "quantization is only supported for F16, BF16 and F32 models"  # Ollama's message (current versions)


def _store_state(daemon) -> tuple[set, set]:
    blobs = {p.name for p in (daemon.models_dir / "blobs").iterdir()}
    manifests = {p for p in (daemon.models_dir / "manifests").rglob("*") if p.is_file()}
    return blobs, manifests


def _model_blob_size(daemon, name: str) -> int:
    tag = name if ":" in name else name + ":latest"
    model, tag = tag.split(":")
    path = daemon.models_dir / "manifests" / "registry.ollama.ai" / "library" / model / tag
    manifest = json.loads(path.read_text())
    layer = next(x for x in manifest["layers"] if x["mediaType"].endswith(".model"))
    return (daemon.models_dir / "blobs" / layer["digest"].replace(":", "-")).stat().st_size


def _generates(daemon, name: str) -> None:
    status, body = daemon.post("/api/generate", {"model": name, "prompt": "the sky", "stream": False,
                                                 "options": {"num_predict": 4, "temperature": 0}})
    assert status == 200 and body["done"] and body["eval_count"] > 0, body


@pytest.mark.parametrize("qtype,level", [("q8_0", "Q8_0"), ("q4_K_M", "Q4_K_M")])
def test_create_quantize_from_gguf(daemon, tiny_gguf, tmp_path, qtype, level):
    """`lm create -q` FROM a GGUF file: Ollama's status line, a smaller model that loads and generates."""
    modelfile = tmp_path / "Modelfile"
    modelfile.write_text(f"FROM {tiny_gguf}\n")
    name = f"tiny-{qtype.lower()}"
    result = daemon.cli("create", name, "-f", str(modelfile), "-q", qtype)
    assert result.returncode == 0, result.stderr
    assert f"quantizing F32 model to {level}" in result.stdout.splitlines()
    status, show = daemon.post("/api/show", {"model": name})
    assert status == 200 and show["details"]["quantization_level"] == level
    size = _model_blob_size(daemon, name)
    assert size < tiny_gguf.stat().st_size * (0.4 if level == "Q8_0" else 0.3), size
    assert not any(b.startswith(".partial") for b in _store_state(daemon)[0])
    _generates(daemon, name)


def test_create_quantize_from_model_name(daemon, tiny_gguf):
    """FROM an existing (F32) model: the quantized copy gets new model layer and config, the source stays."""
    daemon.create_from_gguf("tiny-f32", tiny_gguf)
    status, lines = daemon.post("/api/create", {"model": "tiny-from-q8", "from": "tiny-f32", "quantize": "Q8_0"})
    assert status == 200 and lines[-1] == {"status": "success"}, lines
    assert {"status": "quantizing F32 model to Q8_0"} in lines
    assert daemon.post("/api/show", {"model": "tiny-from-q8"})[1]["details"]["quantization_level"] == "Q8_0"
    assert daemon.post("/api/show", {"model": "tiny-f32"})[1]["details"]["quantization_level"] == "F32"
    _generates(daemon, "tiny-from-q8")
    # asking for the type it already has keeps the layer as it is
    status, _ = daemon.post("/api/create", {"model": "tiny-same", "from": "tiny-f32", "quantize": "f32",
                                            "stream": False})
    assert status == 200 and _model_blob_size(daemon, "tiny-same") == _model_blob_size(daemon, "tiny-f32")


def test_quantized_source_is_refused_and_leaves_nothing(daemon, tiny_q4k_gguf):
    digest = daemon.upload_blob(tiny_q4k_gguf)
    before = _store_state(daemon)
    status, body = daemon.post("/api/create", {"model": "requant", "files": {"m.gguf": digest},
                                               "quantize": "q8_0", "stream": False})
    assert status == 400 and body["error"] == REFUSED
    assert _store_state(daemon) == before
    # the same FROM a model name, streamed: the error is the last line, and no model appears
    daemon.create_from_gguf("tiny-q4k", tiny_q4k_gguf)
    before = _store_state(daemon)
    status, lines = daemon.post("/api/create", {"model": "requant", "from": "tiny-q4k", "quantize": "Q4_K_S"})
    assert lines[-1] == {"error": REFUSED}, lines
    assert _store_state(daemon) == before
    assert daemon.post("/api/show", {"model": "requant"})[0] == 404
    status, body = daemon.post("/api/create", {"model": "requant", "from": "tiny-q4k", "quantize": "q9_k",
                                               "stream": False})
    assert status == 400 and body["error"] == "unsupported quantization type q9_k"


_KV_SIZE = re.compile(r"llama_kv_cache: size = +([\d.]+) MiB .* K \((\w+)\): .* V \((\w+)\)")


@pytest.mark.parametrize("kv,flash,expect", [
    ("f16", None, "f16"),
    ("q8_0", None, "q8_0"),  # flash attention unset: turned on for the quantized cache
    ("Q4_0", "1", "q4_0"),
    ("q8_0", "0", "f16"),  # flash attention off: f16, with a warning (as Ollama)
])
def test_kv_cache_types_load_generate_and_match_the_estimate(make_daemon, tiny_gguf, kv, flash, expect):
    env = {"LM_KV_CACHE_TYPE": kv, "LM_DEBUG": "1", "LM_NUM_PARALLEL": "3", "LM_CONTEXT_LENGTH": "300"}
    if flash is not None:
        env["LM_FLASH_ATTENTION"] = flash
    d = make_daemon(env)
    d.create_from_gguf("tiny", tiny_gguf)
    _generates(d, "tiny")
    entry = d.get("/api/ps")[1]["models"][0]
    cache = entry["kv_cache"]
    assert cache["type"] == expect and cache["slots"] == 3
    log = d.log_path.read_text(errors="replace")
    sizes = _KV_SIZE.findall(log)
    assert sizes, log[-3000:]
    mib, k_type, v_type = sizes[-1]
    assert (k_type, v_type) == (expect, expect)
    # our estimate (which picks GPU layers and slots) is what llama.cpp allocated, padding included
    assert cache["bytes_per_slot"] * cache["slots"] / 2**20 == pytest.approx(float(mib), abs=0.006)
    assert f"KV cache {expect}, " in log
    if flash == "0" and kv != "f16":
        assert "needs flash attention" in log


def _serve(env: dict) -> subprocess.CompletedProcess:
    port = free_port()
    full = {**os.environ, "LM_HOST": f"127.0.0.1:{port}", "LM_NO_AUTOSTART": "1", **env}
    return subprocess.run([sys.executable, "-m", "runner.cli", "serve"], cwd=REPO, env=full, capture_output=True,
                          text=True, timeout=60)


def test_invalid_kv_cache_type_is_a_startup_error(tmp_path):
    t0 = time.monotonic()
    result = _serve({"LM_MODELS": str(tmp_path), "LM_KV_CACHE_TYPE": "q3_k"})
    assert result.returncode != 0 and time.monotonic() - t0 < 30
    assert "LM_KV_CACHE_TYPE must be one of f16, q8_0, q4_0, got 'q3_k'" in result.stderr
    result = _serve({"LM_MODELS": str(tmp_path), "LM_FLASH_ATTENTION": "maybe"})
    assert result.returncode != 0 and "LM_FLASH_ATTENTION must be true or false" in result.stderr
