import hashlib
import json
import logging
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from registry import (
    MEDIA_CONFIG,
    MEDIA_LICENSE,
    MEDIA_MODEL,
    MEDIA_PARAMS,
    MEDIA_TEMPLATE,
    DigestMismatch,
    InvalidDigest,
    Layer,
    Manifest,
    ModelName,
    Store,
    StoreError,
)
from registry.store import TEMP_PREFIX

REPO = Path(__file__).resolve().parent.parent


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def temps(store: Store) -> list[Path]:
    return [p for p in store.root.rglob("*") if p.name.startswith(".")]


@pytest.fixture
def store(tmp_path):
    return Store(tmp_path / "models")


def make_model(store: Store, name: str, *blobs: bytes) -> Manifest:
    layers = [Layer(MEDIA_MODEL, *store.add_blob_bytes(b)) for b in blobs]
    config = Layer(MEDIA_CONFIG, *store.add_json_blob({"model_format": "gguf", "name": name}))
    manifest = Manifest(config=config, layers=layers)
    store.write_manifest(ModelName.parse(name), manifest)
    return manifest


# ---- blobs


def test_init_creates_layout(tmp_path):
    store = Store(tmp_path / "a" / "models")
    assert store.blobs_dir.is_dir() and store.manifests_dir.is_dir()
    assert store.blobs_dir == store.root / "blobs" and store.manifests_dir == store.root / "manifests"


def test_add_and_read_blob(store, tmp_path):
    data = b"hello blob"
    digest, size = store.add_blob_bytes(data)
    assert (digest, size) == (sha(data), len(data))
    assert store.has_blob(digest) and store.has_blob(digest.replace(":", "-"))
    assert store.blob_path(digest) == store.blobs_dir / ("sha256-" + digest[7:])
    assert store.read_blob_bytes(digest) == data
    assert oct(store.blob_path(digest).stat().st_mode & 0o777) == "0o644"

    src = tmp_path / "big.bin"
    src.write_bytes(os.urandom(3 * (1 << 20) + 17))
    digest2, size2 = store.add_blob_file(src)
    assert (digest2, size2) == (sha(src.read_bytes()), src.stat().st_size)
    assert store.blob_path(digest2).read_bytes() == src.read_bytes()
    assert temps(store) == []


def test_missing_blob(store):
    assert not store.has_blob(sha(b"nope"))
    with pytest.raises(FileNotFoundError):
        store.read_blob_bytes(sha(b"nope"))


def test_json_blob_is_compact_and_deterministic(store):
    obj = {"model_format": "gguf", "model_families": ["llama"], "stop": ["<|im_end|>"], "é": 1}
    d1, _ = store.add_json_blob(obj)
    d2, _ = store.add_json_blob(dict(obj))
    assert d1 == d2
    assert store.read_blob_bytes(d1) == json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


@pytest.mark.parametrize("bad", ["../../etc/passwd", "sha256:../../x", "sha256-" + "A" * 64, "x"])
def test_blob_paths_reject_traversal(store, bad):
    for call in (store.blob_path, store.has_blob, store.read_blob_bytes):
        with pytest.raises(InvalidDigest):
            call(bad)


def test_writer_verifies_expected_digest(store):
    with store.blob_writer() as w:
        w.write(b"abc")
        w.write(b"def")
        assert w.commit(expected_digest=sha(b"abcdef").replace(":", "-")) == (sha(b"abcdef"), 6)
    assert store.read_blob_bytes(sha(b"abcdef")) == b"abcdef"


def test_digest_mismatch_leaves_nothing(store):
    expected = sha(b"something else")
    with pytest.raises(DigestMismatch) as err:
        with store.blob_writer() as w:
            w.write(b"actual bytes")
            w.commit(expected)
    assert str(err.value) == f"digest mismatch, expected {expected}, got {sha(b'actual bytes')}"
    assert list(store.blobs_dir.iterdir()) == []


def test_writer_without_commit_or_with_error_leaves_nothing(store):
    with store.blob_writer() as w:
        w.write(b"abandoned")
        assert len(temps(store)) == 1
    with pytest.raises(RuntimeError):
        with store.blob_writer() as w:
            w.write(b"failing")
            raise RuntimeError("boom")
    with pytest.raises(InvalidDigest):
        with store.blob_writer() as w:
            w.write(b"x")
            w.commit("sha256:not-a-digest")
    assert list(store.blobs_dir.iterdir()) == []


def test_existing_blob_is_kept(store):
    digest, _ = store.add_blob_bytes(b"same")
    inode = store.blob_path(digest).stat().st_ino
    assert store.add_blob_bytes(b"same") == (digest, 4)
    assert store.blob_path(digest).stat().st_ino == inode
    assert temps(store) == []


def test_torn_existing_blob_is_replaced(store):
    path = store.blob_path(sha(b"complete data"))
    path.write_bytes(b"compl")  # e.g. left by a writer that did not rename atomically
    store.add_blob_bytes(b"complete data")
    assert path.read_bytes() == b"complete data"


def test_concurrent_thread_writers(store):
    data = os.urandom(1 << 20)
    barrier = threading.Barrier(8)
    results, errors = [], []

    def write():
        try:
            with store.blob_writer() as w:
                barrier.wait()
                for i in range(0, len(data), 64 << 10):
                    w.write(data[i:i + (64 << 10)])
                results.append(w.commit(sha(data)))
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=write) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert results == [(sha(data), len(data))] * 8
    assert store.read_blob_bytes(sha(data)) == data
    assert temps(store) == []


def test_concurrent_process_writers(store, tmp_path):
    data = os.urandom(4 << 20)
    src = tmp_path / "src.bin"
    src.write_bytes(data)
    go = tmp_path / "go"
    script = (
        "import sys, time, pathlib\n"
        "from registry.store import Store\n"
        "root, src, go = map(pathlib.Path, sys.argv[1:4])\n"
        "data = src.read_bytes()\n"
        "s = Store(root)\n"
        "with s.blob_writer() as w:\n"
        "    while not go.exists(): time.sleep(0.005)\n"
        "    for i in range(0, len(data), 1 << 16):\n"
        "        w.write(data[i:i + (1 << 16)])\n"
        "    print(*w.commit(sys.argv[4]))\n"
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", script, str(store.root), str(src), str(go), sha(data)],
                         cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    time.sleep(0.3)
    go.touch()
    outs = [p.communicate(timeout=60) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert [o.split() for o, _ in outs] == [[sha(data), str(len(data))]] * 2
    assert store.read_blob_bytes(sha(data)) == data
    assert temps(store) == []


# ---- manifests


def test_manifest_json_round_trip():
    m = Manifest(
        config=Layer(MEDIA_CONFIG, sha(b"c"), 1),
        layers=[Layer(MEDIA_MODEL, sha(b"m"), 10, from_="/some/file.gguf"), Layer(MEDIA_PARAMS, sha(b"p"), 2)],
    )
    raw = m.to_bytes()
    obj = json.loads(raw)
    assert list(obj) == ["schemaVersion", "mediaType", "config", "layers"]
    assert list(obj["config"]) == ["mediaType", "digest", "size"]
    assert obj["layers"][0]["from"] == "/some/file.gguf" and "from" not in obj["layers"][1]
    assert raw.endswith(b"}\n") and b" " not in raw
    back = Manifest.from_bytes(raw)
    assert back == m and back.to_bytes() == raw
    assert m.total_size == 13
    assert m.layer(MEDIA_PARAMS).size == 2 and m.layer(MEDIA_TEMPLATE) is None
    assert m.layers_of(MEDIA_MODEL) == [m.layers[0]]


@pytest.mark.parametrize(
    "raw",
    [b"", b"not json", b"[]", b"{}", b'{"config": 5}', b'{"config": {"mediaType": "x", "size": 1}}',
     b'{"config": {"mediaType": "x", "digest": "sha256:../../etc/passwd", "size": 1}}',
     b'{"config": {"mediaType": "x", "digest": "sha256:' + b"a" * 64 + b'", "size": -1}}',
     b'{"config": {"mediaType": "x", "digest": "sha256:' + b"a" * 64 + b'", "size": 1}, "layers": {}}',
     b"\xff\xfe"],
)
def test_manifest_garbage_raises_value_error(raw):
    with pytest.raises(ValueError):
        Manifest.from_bytes(raw)


def test_write_find_and_stored_model_fields(store):
    manifest = make_model(store, "smollm2:135m", b"weights")
    path = store.manifests_dir / "registry.ollama.ai" / "library" / "smollm2" / "135m"
    assert path.read_bytes() == manifest.to_bytes()
    found = store.find(ModelName.parse("smollm2:135m"))
    assert found.name == ModelName.parse("smollm2:135m")
    assert found.manifest == manifest
    assert found.digest == hashlib.sha256(path.read_bytes()).hexdigest()
    assert found.size == manifest.total_size == len(b"weights") + manifest.config.size
    assert found.modified_at.tzinfo is not None
    assert abs(found.modified_at.timestamp() - path.stat().st_mtime) < 1e-3
    assert store.find(ModelName.parse("smollm2:360m")) is None
    assert store.find(ModelName.parse("other")) is None
    assert temps(store) == []


def test_find_ignores_case(store):
    make_model(store, "Me/MyModel:Q4_K_M", b"w")
    for spelling in ("me/mymodel:q4_k_m", "ME/MYMODEL:Q4_K_M", "Registry.Ollama.AI/me/MyModel:q4_K_m"):
        found = store.find(ModelName.parse(spelling))
        assert found is not None and found.name == ModelName.parse("Me/MyModel:Q4_K_M")


def test_write_manifest_replaces_other_case(store):
    make_model(store, "Me/Model:Tag", b"v1")
    make_model(store, "me/model:tag", b"v2")
    models = store.list_models()
    assert len(models) == 1
    assert store.read_blob_bytes(models[0].manifest.layers[0].digest) == b"v2"
    assert len(list(store.manifests_dir.rglob("*"))) == 4  # host, ns, model dirs and one tag


def test_delete_keeps_shared_blobs(store):
    a = make_model(store, "a:1", b"shared", b"only-a")
    make_model(store, "b:1", b"shared", b"only-b")
    assert store.delete(ModelName.parse("A:1")) is True
    assert store.find(ModelName.parse("a:1")) is None
    assert store.has_blob(sha(b"shared")) and store.has_blob(sha(b"only-b"))
    assert not store.has_blob(sha(b"only-a"))
    assert not (store.manifests_dir / "registry.ollama.ai" / "library" / "a").exists()
    assert store.delete(ModelName.parse("a:1")) is False
    assert sha(b"shared") in store.referenced_digests()
    assert not store.has_blob(a.config.digest) or a.config.digest in store.referenced_digests()
    assert store.delete(ModelName.parse("b:1")) is True
    assert list(store.blobs_dir.iterdir()) == []
    assert list(store.manifests_dir.iterdir()) == []


def test_manifest_never_names_a_blob_a_delete_removed(store):
    # A create committed a blob that already existed (so kept the old file), then a delete of the only
    # model using it removed that file before the create wrote its manifest: the write must refuse.
    make_model(store, "a:1", b"weights")
    with store.blob_writer() as w:
        w.write(b"weights")
        digest, size = w.commit()
    assert store.delete(ModelName.parse("a:1"))
    config = Layer(MEDIA_CONFIG, *store.add_json_blob({"model_format": "gguf"}))
    with pytest.raises(StoreError, match="missing"):
        store.write_manifest(ModelName.parse("b:1"), Manifest(config=config, layers=[Layer(MEDIA_MODEL, digest, size)]))
    assert store.find(ModelName.parse("b:1")) is None


def test_existing_blob_commit_refreshes_its_time(store):
    digest, _ = store.add_blob_bytes(b"old")
    path = store.blob_path(digest)
    os.utime(path, (1_000_000, 1_000_000))
    store.add_blob_bytes(b"old")
    assert time.time() - path.stat().st_mtime < 60
    assert store.prune_unreferenced_blobs(grace_s=3600) == []
    os.utime(path, (1_000_000, 1_000_000))
    assert store.prune_unreferenced_blobs(grace_s=3600) == [path] and not path.exists()


def test_delete_keeps_blobs_when_another_manifest_is_unreadable(store, caplog):
    make_model(store, "a:1", b"maybe-shared")
    bad = store.manifests_dir / "registry.ollama.ai" / "library" / "broken" / "latest"
    bad.parent.mkdir(parents=True)
    bad.write_text("{ truncated")
    with caplog.at_level(logging.WARNING):
        assert store.delete(ModelName.parse("a:1"))
    assert store.has_blob(sha(b"maybe-shared"))


def test_list_models_newest_first_and_skips_bad(store, caplog):
    for i, name in enumerate(["old:1", "mid:1", "new:1"]):
        make_model(store, name, name.encode())
        path = store.find(ModelName.parse(name)).path
        os.utime(path, (1_700_000_000 + i * 100, 1_700_000_000 + i * 100))
    bad = store.manifests_dir / "registry.ollama.ai" / "library" / "broken" / "latest"
    bad.parent.mkdir(parents=True)
    bad.write_text("garbage")
    (store.manifests_dir / "registry.ollama.ai" / "library" / "mid" / ".DS_Store").write_text("x")
    (store.manifests_dir / "stray-file").write_text("x")
    with caplog.at_level(logging.WARNING):
        models = store.list_models()
    assert [m.name.display for m in models] == ["new:1", "mid:1", "old:1"]
    assert "broken" in caplog.text


def test_reads_hand_made_ollama_store(tmp_path):
    """The layout and bytes Ollama itself writes, made by hand, listed and read as is."""
    root = tmp_path / ".ollama" / "models"
    (root / "blobs").mkdir(parents=True)
    blobs = {"model": b"GGUF fake weights", "template": b"{{ .Prompt }}", "license": b"MIT",
             "params": b'{"stop":["<|im_end|>"]}', "config": b'{"model_format":"gguf","model_family":"llama"}'}
    digests = {}
    for kind, data in blobs.items():
        digests[kind] = sha(data)
        (root / "blobs" / ("sha256-" + digests[kind][7:])).write_bytes(data)
    layers = [{"mediaType": f"application/vnd.ollama.image.{k}", "digest": digests[k], "size": len(blobs[k])}
              for k in ("model", "template", "license", "params")]
    manifest = {"schemaVersion": 2, "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
                "config": {"mediaType": MEDIA_CONFIG, "digest": digests["config"], "size": len(blobs["config"])},
                "layers": layers}
    raw = json.dumps(manifest, separators=(",", ":")).encode() + b"\n"
    for rel in ("registry.ollama.ai/library/smollm2/135m", "registry.ollama.ai/me/tuned/latest",
                "hf.co/bartowski/Some-Model-GGUF/Q4_K_M", "localhost:5000/ns/m/v1"):
        path = root / "manifests" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(raw)

    store = Store(root)
    names = sorted(m.name.display for m in store.list_models())
    assert names == ["hf.co/bartowski/Some-Model-GGUF:Q4_K_M", "localhost:5000/ns/m:v1", "me/tuned:latest",
                     "smollm2:135m"]
    found = store.find(ModelName.parse("smollm2:135m"))
    assert found.digest == hashlib.sha256(raw).hexdigest()
    assert found.size == sum(len(b) for b in blobs.values())
    assert store.read_blob_bytes(found.manifest.layer(MEDIA_TEMPLATE).digest) == b"{{ .Prompt }}"
    assert store.read_blob_bytes(found.manifest.layer(MEDIA_LICENSE).digest) == b"MIT"
    assert store.blob_path(found.manifest.layer(MEDIA_MODEL).digest).read_bytes() == blobs["model"]
    assert store.referenced_digests() == set(digests.values())
    assert store.cleanup() == []
    assert len(list((root / "blobs").iterdir())) == 5


def test_cleanup_removes_only_abandoned_temps(store):
    real, _ = store.add_blob_bytes(b"real blob")
    make_model(store, "m:1", b"w")
    old = time.time() - 3600 * 2
    leftover = store.blobs_dir / (TEMP_PREFIX + "deadbeef")
    leftover.write_bytes(b"half a download")
    manifest_leftover = store.manifests_dir / "registry.ollama.ai" / "library" / "m" / (TEMP_PREFIX + "1234")
    manifest_leftover.write_bytes(b"{")
    fresh = store.blobs_dir / (TEMP_PREFIX + "fresh")
    fresh.write_bytes(b"maybe a writer that just started")
    for p in (leftover, manifest_leftover):
        os.utime(p, (old, old))

    with store.blob_writer() as live:  # an old-looking temp that a live writer still holds
        live.write(b"slow download")
        live_temp = next(p for p in store.blobs_dir.iterdir() if p.name.startswith(TEMP_PREFIX)
                         and p not in (leftover, fresh))
        os.utime(live_temp, (old, old))
        removed = store.cleanup()
        assert sorted(removed) == sorted([leftover, manifest_leftover])
        assert live_temp.exists() and fresh.exists()
        live.write(b" continues")
        digest, _ = live.commit()
    assert store.read_blob_bytes(digest) == b"slow download continues"
    assert store.has_blob(real) and store.find(ModelName.parse("m:1")) is not None
    assert store.cleanup() == []


def test_store_rejects_hand_built_traversal_names(store):
    with pytest.raises(ValueError):
        store.write_manifest(ModelName("..", "..", "..", "x"), Manifest(config=Layer(MEDIA_CONFIG, sha(b""), 0)))
    with pytest.raises(ValueError):
        store.find(ModelName("h", "..", "m", "t"))


def test_cleanup_removes_young_temps_of_writers_that_are_gone(store):
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # a pid that no process has any more (reuse within the test is not a concern)
    dead = store.blobs_dir / f"{TEMP_PREFIX}{gone.pid}-0123abcd"
    dead.write_bytes(b"a killed upload")
    live_other = store.blobs_dir / f"{TEMP_PREFIX}{os.getppid()}-0123abcd"  # another live process's, unlocked
    live_other.write_bytes(b"maybe a writer that has not locked it yet")
    ours = store.blobs_dir / f"{TEMP_PREFIX}{os.getpid()}-0123abcd"
    ours.write_bytes(b"this process's")
    assert store.cleanup() == [dead]
    assert live_other.exists() and ours.exists()
    with store.blob_writer() as w:  # what the store writes carries its pid
        assert any(p.name.startswith(f"{TEMP_PREFIX}{os.getpid()}-") and p != ours for p in store.blobs_dir.iterdir())
        w.abort()


def test_a_hold_keeps_its_blobs_from_a_delete_and_an_overwrite(store):
    make_model(store, "a:1", b"shared weights", b"a's own")
    with store.hold() as hold:
        assert hold.find(ModelName.parse("a:1")) is not None  # a create from a:1 ...
        digest, _ = hold.add_blob_bytes(b"a's own")  # ... and a layer it found already there
        assert store.delete(ModelName.parse("a:1"))
        assert store.has_blob(sha(b"shared weights")) and store.has_blob(digest)
        config = Layer(MEDIA_CONFIG, *hold.add_json_blob({"model_format": "gguf"}))
        hold.write_manifest(ModelName.parse("b:1"), Manifest(config=config, layers=[
            Layer(MEDIA_MODEL, sha(b"shared weights"), 14), Layer(MEDIA_MODEL, digest, 7)]))
    assert store.find(ModelName.parse("b:1")) is not None
    # a:1's config, held (so spared by the delete) but not referenced by b:1, went when the hold ended
    assert sorted(p.name for p in store.blobs_dir.iterdir()) == sorted(
        f"sha256-{d[7:]}" for d in store.find(ModelName.parse("b:1")).manifest.digests())
    # Overwriting: write_manifest gives the replaced manifest, whose layers nothing else uses can go
    config = Layer(MEDIA_CONFIG, *store.add_json_blob({"model_format": "gguf", "v": 2}))
    new = Manifest(config=config, layers=[Layer(MEDIA_MODEL, *store.add_blob_bytes(b"new weights"))])
    replaced = store.write_manifest(ModelName.parse("b:1"), new)
    assert replaced is not None and digest in replaced.digests()
    assert digest in store.remove_unused(replaced.digests())
    assert not store.has_blob(sha(b"shared weights")) and all(store.has_blob(d) for d in new.digests())
    assert store.delete(ModelName.parse("b:1")) and list(store.blobs_dir.iterdir()) == []
    assert not store.delete(ModelName.parse("b:1"))
