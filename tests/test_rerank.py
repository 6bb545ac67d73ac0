"""Rerank (/api/rerank, /v1/rerank) on a real daemon with a real cross-encoder.

The model is a tiny BertForSequenceClassification written as safetensors (tests/cross_encoder_factory.py),
created the way a user does it (`lm create NAME -f Modelfile`, FROM the checkpoint directory: converted
with its pooler and classifier, rank pooling) and served by llama.cpp. Its scores are checked against
a float64 numpy forward pass of the same checkpoint: BERT encoder, pooler tanh(dense(h[CLS])), classifier.
The daemon's GGUF holds F16 matrices, so a score may differ from the reference by up to TOLERANCE.
"""

from __future__ import annotations

import json
import os
import urllib.request

import numpy as np
import pytest
from gguf import GGUFReader
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from registry.convert import ConvertError, convert_directory
from tests.cross_encoder_factory import POSITIONS, CrossEncoder, write_cross_encoder

# F16 weights against float64: the differences measured on these scores (magnitude 0.4-4.4) were below 6e-3
TOLERANCE = 2e-2
QUERY = "where do fish swim?"
DOCUMENTS = [
    "fish swim in the sea.",
    "birds fly in the sky.",
    "the cat sat on the mat.",
    "a red car is on the road.",
    "dogs run and jump.",
    "small fish eat food in the water.",
]


@pytest.fixture(scope="module")
def encoder_dir(tmp_path_factory):
    # seed 1: the reference's scores of DOCUMENTS lie at least 0.4 apart, so the order is unambiguous
    return write_cross_encoder(tmp_path_factory.mktemp("cross-encoder") / "tiny-cross-encoder", seed=1)


@pytest.fixture(scope="module")
def reference(encoder_dir) -> CrossEncoder:
    return CrossEncoder(encoder_dir)


@pytest.fixture(scope="module")
def reranker(daemon, encoder_dir) -> str:
    mf = encoder_dir.parent / "Modelfile"
    mf.write_text(f"FROM {encoder_dir}\n")
    result = daemon.cli("create", "tiny-rerank", "-f", str(mf))
    assert result.returncode == 0, result.stderr + result.stdout
    assert "converting model" in result.stdout
    return "tiny-rerank"


def rerank(daemon, body: dict, path: str = "/api/rerank", status: int = 200):
    got, out = daemon.post(path, body)
    assert got == status, out
    return out


# -- the conversion -------------------------------------------------------------------------------------------
def _kv(reader: GGUFReader, key: str):
    field = reader.fields[key]
    if field.types[0].name == "ARRAY":
        return [bytes(field.parts[i]).decode() for i in field.data]
    return field.parts[field.data[0]][0].item()


def test_conversion_keeps_the_head(encoder_dir, tmp_path):
    out = tmp_path / "x.gguf"
    with open(out, "wb") as f:
        result = convert_directory(encoder_dir, f)
    assert result.architecture == "BertForSequenceClassification" and result.gguf_architecture == "bert"
    r = GGUFReader(out)
    assert _kv(r, "bert.pooling_type") == 4  # LLAMA_POOLING_TYPE_RANK
    assert _kv(r, "bert.classifier.output_labels") == ["LABEL_0"]
    assert _kv(r, "tokenizer.ggml.add_sep_token") is False  # [CLS] q [SEP] d [SEP]: one SEP between the two
    shapes = {t.name: list(t.shape) for t in r.tensors}
    assert shapes["cls.weight"] == [32, 32] and shapes["cls.bias"] == [32]  # the pooler
    assert shapes["cls.output.weight"] == [32, 1] and shapes["cls.output.bias"] == [1]  # the classifier


def test_conversion_refuses_what_is_no_reranker(tmp_path):
    with pytest.raises(ConvertError, match="the classifier has 3 labels; a reranker has one"):
        convert_directory(write_cross_encoder(tmp_path / "three", labels=3), open(os.devnull, "wb"))
    with pytest.raises(ConvertError, match="the cross-encoder lacks tensor bert.pooler.dense.weight"):
        convert_directory(write_cross_encoder(tmp_path / "nopool", pooler=False), open(os.devnull, "wb"))


# -- scores against the numpy reference ---------------------------------------------------------------------
def test_show_reports_rerank(daemon, reranker):
    status, show = daemon.post("/api/show", {"model": reranker})
    assert status == 200 and show["capabilities"] == ["rerank"]
    assert show["model_info"]["bert.pooling_type"] == 4


def test_scores_match_the_reference(daemon, reranker, reference):
    expected = np.array([reference.score(QUERY, d) for d in DOCUMENTS])
    # the test means something only if the reference tells the documents apart beyond the tolerance
    gaps = np.diff(np.sort(expected))
    assert gaps.min() > 3 * TOLERANCE, expected
    out = rerank(daemon, {"model": reranker, "query": QUERY, "documents": DOCUMENTS})
    assert out["model"] == reranker and out["object"] == "list"
    results = out["results"]
    assert [r["index"] for r in results] == list(np.argsort(-expected))  # best first
    for r in results:
        assert set(r) == {"index", "relevance_score"}  # no document unless asked
        assert abs(r["relevance_score"] - expected[r["index"]]) < TOLERANCE, (r, expected)
    pairs = [reference.pair(QUERY, d)[0] for d in DOCUMENTS]
    assert out["usage"] == {"prompt_tokens": sum(map(len, pairs)), "total_tokens": sum(map(len, pairs))}


def test_v1_top_n_and_documents(daemon, reranker, reference):
    expected = np.array([reference.score(QUERY, d) for d in DOCUMENTS])
    out = rerank(daemon, {"model": reranker, "query": QUERY, "documents": DOCUMENTS, "top_n": 2,
                          "return_documents": True}, "/v1/rerank")
    best = list(np.argsort(-expected)[:2])
    assert [r["index"] for r in out["results"]] == best
    assert [r["document"] for r in out["results"]] == [{"text": DOCUMENTS[i]} for i in best]
    for r in out["results"]:
        assert abs(r["relevance_score"] - expected[r["index"]]) < TOLERANCE
    # top_n beyond the documents: all of them; one document alone scores as it does among others
    out = rerank(daemon, {"model": reranker, "query": QUERY, "documents": DOCUMENTS[:1], "top_n": 50}, "/v1/rerank")
    assert len(out["results"]) == 1 and abs(out["results"][0]["relevance_score"] - expected[0]) < TOLERANCE


def test_long_document_is_truncated(daemon, reranker, reference):
    long_doc = " ".join(["the big dog runs on the road ."] * 40)  # ~280 tokens, the model holds 128
    out = rerank(daemon, {"model": reranker, "query": QUERY, "documents": [long_doc, DOCUMENTS[0]]})
    by_index = {r["index"]: r["relevance_score"] for r in out["results"]}
    ids = reference.pair(QUERY, long_doc)[0]
    truncated = ids[:POSITIONS - 1] + ids[-1:]  # the document's end is cut, its closing [SEP] kept
    assert abs(by_index[0] - reference.score_ids(truncated)) < TOLERANCE
    assert out["usage"]["prompt_tokens"] == POSITIONS + len(reference.pair(QUERY, DOCUMENTS[0])[0])
    out = rerank(daemon, {"model": reranker, "query": QUERY, "documents": [long_doc], "truncate": False}, status=400)
    assert out == {"error": "the input length exceeds the context length"}
    out = rerank(daemon, {"model": reranker, "query": long_doc, "documents": ["a cat"]}, status=400)
    assert out == {"error": "the query is longer than the context length"}


# -- bad requests ---------------------------------------------------------------------------------------------
LONE_SURROGATE = ("invalid JSON: a string holds a lone UTF-16 surrogate (\\ud800-\\udfff), which is not "
                  "valid Unicode")


@pytest.mark.parametrize("body, message", [
    ({"documents": ["a"]}, "query is required"),
    ({"query": 5, "documents": ["a"]}, "query must be a string"),
    ({"query": "", "documents": ["a"]}, "query must not be empty"),
    ({"query": "q"}, "documents must be a non-empty list of strings"),
    ({"query": "q", "documents": []}, "documents must be a non-empty list of strings"),
    ({"query": "q", "documents": "a"}, "documents must be a non-empty list of strings"),
    ({"query": "q", "documents": ["a", {"text": "b"}]}, "documents[1] must be a string"),
    ({"query": "q", "documents": ["a", None]}, "documents[1] must be a string"),
    ({"query": "q", "documents": ["a"], "top_n": 0}, "top_n must be a positive integer"),
    ({"query": "q", "documents": ["a"], "top_n": "2"}, "invalid value for top_n: expected int"),
    ({"query": "q", "documents": ["a"], "top_n": True}, "invalid value for top_n: expected int"),
    ({"query": "q", "documents": ["a"], "return_documents": "yes"},
     "invalid value for return_documents: expected bool"),
    # a lone surrogate is refused where every body is read (runner/server/http.py read_json)
    ({"query": "\ud800", "documents": ["a"]}, LONE_SURROGATE),
    ({"query": "q", "documents": ["fine", "x\udfff"]}, LONE_SURROGATE),
])
def test_bad_input_400(daemon, reranker, body, message):
    assert rerank(daemon, {"model": reranker, **body}, status=400) == {"error": message}
    out = rerank(daemon, {"model": reranker, **body}, "/v1/rerank", status=400)
    assert out["error"]["message"] == message and out["error"]["type"] == "invalid_request_error"


def test_too_many_documents_400(daemon, reranker):
    # the daemon's LM_MAX_BATCH (2048 by default) bounds the documents as it bounds embedding inputs
    out = rerank(daemon, {"model": reranker, "query": "q", "documents": ["a"] * 2049}, status=400)
    assert out == {"error": "too many inputs: 2049 (the limit is 2048, LM_MAX_BATCH)"}


def test_model_errors(daemon, reranker, tiny):
    out = rerank(daemon, {"model": "no-such-model", "query": "q", "documents": ["a"]}, status=404)
    assert out == {"error": "model 'no-such-model' not found"}
    out = rerank(daemon, {"model": "no-such-model", "query": "q", "documents": ["a"]}, "/v1/rerank", status=404)
    assert out["error"]["type"] == "not_found_error"
    assert rerank(daemon, {"query": "q", "documents": ["a"]}, status=400) == {"error": "model is required"}
    # a generative model is no reranker, and a reranker has no embeddings: refused before loading
    out = rerank(daemon, {"model": tiny, "query": "q", "documents": ["a"]}, status=400)
    assert out == {"error": f'"{tiny}:latest" does not support rerank'}
    for path, body in (("/api/embed", {"input": "a"}), ("/api/embeddings", {"prompt": "a"})):
        status, out = daemon.post(path, {"model": reranker, **body})
        assert status == 400 and out == {"error": f'"{reranker}:latest" does not support embeddings'}, path
    status, out = daemon.post("/v1/embeddings", {"model": reranker, "input": "a"})
    assert status == 400 and out["error"]["message"] == f'"{reranker}:latest" does not support embeddings'
    status, out = daemon.post("/api/generate", {"model": reranker, "prompt": "a"})
    assert status == 400 and "does not support generate" in out["error"]


def test_openapi_lists_the_routes(daemon):
    with urllib.request.urlopen(daemon.url + "/openapi.json") as resp:
        spec = json.load(resp)
    for path in ("/api/rerank", "/v1/rerank"):
        op = spec["paths"][path]["post"]
        assert op["requestBody"]["content"]["application/json"]["schema"] == {
            "$ref": "#/components/schemas/RerankRequest"}
    assert spec["components"]["schemas"]["RerankRequest"]["required"] == ["model", "query", "documents"]


# -- arbitrary requests: never a 5xx, and a 200 is always a well-formed ranking --------------------------------
@settings(max_examples=40, deadline=None, database=None, derandomize=True,
          suppress_health_check=list(HealthCheck))
@given(query=st.text(max_size=300), documents=st.lists(st.text(max_size=400), max_size=12),
       top_n=st.one_of(st.none(), st.integers(-2, 20)), truncate=st.one_of(st.none(), st.booleans()))
def test_arbitrary_requests(daemon, reranker, query, documents, top_n, truncate):
    body = {"model": reranker, "query": query, "documents": documents}
    if top_n is not None:
        body["top_n"] = top_n
    if truncate is not None:
        body["truncate"] = truncate
    status, out = daemon.post("/api/rerank", body, timeout=30)
    assert status in (200, 400), (status, out)
    if status == 400:
        assert isinstance(out["error"], str) and out["error"]
        return
    results = out["results"]
    assert len(results) == min(top_n or len(documents), len(documents))
    scores = [r["relevance_score"] for r in results]
    assert scores == sorted(scores, reverse=True)
    assert len({r["index"] for r in results}) == len(results) and all(0 <= r["index"] < len(documents)
                                                                     for r in results)
