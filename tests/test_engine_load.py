"""The engine under load, through the real daemon: 32 requests at once give exactly what each gives alone
(greedy and sampled, token for token), streams neither mix nor drop pieces, and clients that hang up
mid-stream give their slots back. All of it with the slots in one llama.cpp context and split over two.

Token-exact equality needs batch-invariant kernels: measured so for smollm2 (Q4_1) on the CPU, but not
for the tiny random-weight GGUFs (their logits move by 1e-7..1e-3 between a decode of one sequence and
of 32, which flips samples from their nearly flat distributions). So the exactness check runs smollm2;
the rest runs the tiny model, where the streams are compared with the same request's non-streamed
answer under the same load."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.conftest import REPO, Daemon
from tests.test_faults import runner_pids

N = 32


# Once with one context for all slots, once with the slots split over two contexts (the pipelined engine
# a GPU gets, see runner/engine/batch.py; forced on here with LM_PIPELINE).
@pytest.fixture(scope="module", params=["0", "1"], ids=["one-context", "pipelined"])
def busy(request, tmp_path_factory, tiny_gguf, smollm2_path) -> Daemon:
    env = {"LM_NUM_PARALLEL": str(N), "LM_CONTEXT_LENGTH": "512", "LM_PIPELINE": request.param}
    d = Daemon(tmp_path_factory.mktemp("load-models"), env).start()
    d.create_from_gguf("tiny", tiny_gguf)
    d.create_from_gguf("smollm2", smollm2_path)
    yield d
    d.stop()


def _cmdline(pid: int) -> bytes:
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        return f.read()


def _body(i: int, stream: bool, model: str = "tiny") -> dict:
    # Even requests greedy, odd ones sampled with their own seed; different prompts and lengths.
    options = {"seed": 1000 + i, "temperature": 0 if i % 2 == 0 else 0.9, "num_predict": 12 + i % 5}
    return {"model": model, "prompt": f"Story {i}: the sky is", "raw": True, "stream": stream, "options": options}


def _streamed(d: Daemon, i: int, model: str = "tiny") -> list[dict]:
    status, lines = d.post("/api/generate", _body(i, True, model))
    assert status == 200, lines
    return lines


def test_concurrent_streams_equal_their_solo_runs(busy):
    solo = []
    for i in range(N):
        status, body = busy.post("/api/generate", _body(i, False, "smollm2"))
        assert status == 200, body
        solo.append(body)
    runner = runner_pids(busy.proc.pid)
    pipelined = busy.env["LM_PIPELINE"] == "1"
    assert any((b"--contexts\x002" in _cmdline(p)) == pipelined for p in runner), "the engine layout asked for"
    with ThreadPoolExecutor(N) as pool:
        together = list(pool.map(lambda i: _streamed(busy, i, "smollm2"), range(N)))
    for i, (alone, lines) in enumerate(zip(solo, together)):
        *pieces, final = lines
        assert final["done"] is True and all(p["done"] is False for p in pieces), i
        assert "error" not in final, final
        # Token for token (context is prompt + generated ids), and the text streamed adds up to it.
        assert final["context"] == alone["context"], f"request {i} diverged under load"
        assert final["eval_count"] == alone["eval_count"]
        assert "".join(p["response"] for p in lines) == alone["response"], f"request {i}'s stream lost or mixed text"
    greedy = [b["response"] for b in solo[0::2]]
    sampled = [b["response"] for b in solo[1::2]]
    assert len(set(greedy)) > 1 and len(set(sampled)) > 1  # the prompts and seeds really differ


def test_streams_under_load_neither_mix_nor_drop_pieces(busy, tiny_gguf):
    """Each of 32 concurrent streams carries exactly the text of the tokens generated for it: its pieces
    joined equal the detokenized ids its final chunk reports (context = prompt + generated)."""
    from runner.engine.model import LoadedModel
    from runner.engine.protocol import LaunchConfig

    with ThreadPoolExecutor(N) as pool:
        streams = list(pool.map(lambda i: _streamed(busy, i), range(N)))
    vocab = LoadedModel(LaunchConfig(model=str(tiny_gguf), num_ctx=64, parallel=1))
    try:
        for i, lines in enumerate(streams):
            *pieces, final = lines
            assert final["done"] is True and all(p["done"] is False for p in pieces) and "error" not in final
            assert 0 < len(pieces) <= final["eval_count"]  # at most one chunk per token
            generated = final["context"][len(final["context"]) - final["eval_count"]:]
            text = "".join(p["response"] for p in lines)
            assert text == vocab.detokenize(generated), f"stream {i} lost or mixed pieces"
    finally:
        vocab.close()


def test_same_seed_same_text_under_load(busy):
    """One seeded, sampled request repeated 32 times at once: 32 identical answers."""
    body = {**_body(1, False, "smollm2"), "prompt": "Once upon a time"}
    with ThreadPoolExecutor(N) as pool:
        answers = list(pool.map(lambda _: busy.post("/api/generate", body)[1], range(N)))
    assert len({json.dumps(a["context"]) for a in answers}) == 1
    assert len({a["response"] for a in answers}) == 1


def test_clients_hanging_up_free_their_slots(busy):
    endless = {"model": "tiny", "prompt": "go on", "raw": True, "options": {"num_predict": 1_000_000}}
    streams = []
    for _ in range(N):  # every slot busy with an answer that would take minutes to finish
        req = urllib.request.Request(busy.url + "/api/generate", data=json.dumps(endless).encode(), method="POST")
        resp = urllib.request.urlopen(req, timeout=60)
        assert "response" in json.loads(resp.readline())
        streams.append(resp)
    for resp in streams:
        resp.close()
    t0 = time.time()
    with ThreadPoolExecutor(N) as pool:
        results = list(pool.map(lambda i: busy.post("/api/generate", _body(i, False), timeout=60), range(N)))
    assert all(status == 200 and body["done"] for status, body in results)
    assert time.time() - t0 < 60  # only possible once the hung-up answers were cancelled in the engine


def test_num_batch_sizes_the_runners_steps(busy, tiny_gguf):
    """PARAMETER num_batch (Ollama's option) reaches the runner as its llama_decode batch size (raised to
    the slot count where smaller: a decode step carries a token of each), and answers come out whole."""
    busy.create_from_gguf("tiny-batch16", tiny_gguf, parameters={"num_batch": 16})
    body = {"model": "tiny-batch16", "prompt": "word " * 200, "raw": True, "stream": False,
            "options": {"num_predict": 5, "temperature": 0}}
    status, answer = busy.post("/api/generate", body)
    assert status == 200 and answer["done"] and answer["eval_count"] == 5, answer
    assert answer["prompt_eval_count"] > N  # more than one step's worth of prompt (the batch is >= the slots)
    assert any(b"--num-batch\x0016\x00" in _cmdline(p) for p in runner_pids(busy.proc.pid))


def test_load_correctness_script_finds_cpu_outputs_identical(busy):
    # scripts/load_correctness.py is the GPU's check (texts need not be equal there); on the CPU it
    # must report every text under load identical to its run alone, and no broken limits.
    script = REPO / "scripts" / "load_correctness.py"
    out = subprocess.run([sys.executable, str(script), "--model", "smollm2", "--clients", "8", "--tokens", "12",
                          "--host", f"127.0.0.1:{busy.port}"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "8 prompts, 12 tokens: 8 identical under load, 0 with problems" in out.stdout


# Every model the store ships, at the probe's settings (issue 25): gemma3 is Q4_K_M, whose Q4_K weights
# llama.cpp's CPU backend repacks by default, with a kernel for four rows at once that rounds otherwise
# than its one-row kernel: five of these eight texts differed under load until lm turned repacking off.
@pytest.fixture(scope="module")
def shipped(tmp_path_factory, smollm2_path, gemma3_path) -> Daemon:
    d = Daemon(tmp_path_factory.mktemp("shipped-models"), {"LM_NUM_PARALLEL": "4"}).start()
    d.create_from_gguf("smollm2", smollm2_path)
    d.create_from_gguf("gemma3", gemma3_path)
    yield d
    d.stop()


@pytest.mark.timeout(1200)  # 16 answers of 40 tokens: minutes on a shared two-core machine
@pytest.mark.parametrize("model", ["smollm2", "gemma3"])
def test_seeded_texts_under_load_equal_their_solo_texts_for_every_shipped_model(shipped, model):
    bodies = [{"model": model, "prompt": f"Count to {i}:", "raw": True, "stream": False,
               "options": {"seed": 7, "temperature": 0.8, "num_predict": 40}} for i in range(8)]
    solo = [shipped.post("/api/generate", body, timeout=600)[1]["response"] for body in bodies]
    with ThreadPoolExecutor(len(bodies)) as pool:
        together = list(pool.map(lambda body: shipped.post("/api/generate", body, timeout=600), bodies))
    assert all(status == 200 for status, _ in together), together
    differ = [i for i, (alone, (_, body)) in enumerate(zip(solo, together)) if body["response"] != alone]
    assert not differ, f"{model}: {len(differ)} of {len(bodies)} texts differed under load: {differ}"
    assert len(set(solo)) > 1
