"""Speculative decoding through the daemon (issue 23): n-gram drafts turned on by a request's options
or a model's PARAMETER, greedy answers token for token as without them (smollm2, gemma3), the draft
counts in the final response and /metrics, and bad option values refused with a 400."""

from __future__ import annotations

import threading

import pytest

from tests.test_metrics import find, scrape

PARAGRAPH = ("The quick brown fox jumps over the lazy dog. Pack my box with five dozen liquor jugs. How "
             "vexingly quick daft zebras jump! Sphinx of black quartz, judge my vow.")
PROMPT = f"Repeat this text exactly: {PARAGRAPH}"
NGRAM = {"draft_type": "ngram", "draft_num_predict": 4}


def generate(daemon, model: str, **options) -> dict:
    status, body = daemon.post("/api/generate", {"model": model, "prompt": PROMPT, "stream": False,
                                                 "options": {"temperature": 0, "num_predict": 48, **options}})
    assert status == 200, body
    return body


# k = 4 on gemma3 (Q4_K) too: a step of 5 rows of one sequence is bit-identical to one row only because
# the CPU loads models without llama.cpp's repacked weights (LM_BATCH_INVARIANT); with them it diverged.
@pytest.mark.parametrize("name, k", [("smollm2", 4), ("gemma3", 4)])
def test_greedy_answer_is_the_same_with_ngram_drafts(daemon, request, name, k):
    model = request.getfixturevalue(name)
    plain = generate(daemon, model)
    spec = generate(daemon, model, draft_type="ngram", draft_num_predict=k)
    assert spec["response"] == plain["response"]
    assert spec["context"] == plain["context"]  # token for token
    assert spec["eval_count"] == plain["eval_count"]
    assert "draft_count" not in plain and "draft_accepted_count" not in plain
    assert 0 < spec["draft_accepted_count"] <= spec["draft_count"]


def test_concurrent_requests_keep_their_answers(daemon, smollm2):
    plain = generate(daemon, smollm2)
    results: dict[int, dict] = {}

    def one(i: int) -> None:
        results[i] = generate(daemon, smollm2, **(NGRAM if i else {}))

    threads = [threading.Thread(target=one, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert [results[i]["context"] for i in range(3)] == [plain["context"]] * 3
    assert results[1]["draft_accepted_count"] > 0 and results[2]["draft_accepted_count"] > 0


def test_a_models_parameter_turns_it_on_and_metrics_ps_and_cli_show_it(daemon, smollm2):
    status, body = daemon.post("/api/create", {"model": "smollm2-spec", "from": smollm2, "stream": False,
                                               "parameters": {"draft_type": "ngram", "num_predict": 48}})
    assert status == 200, body
    before = scrape(daemon)
    spec = generate(daemon, "smollm2-spec")  # draft_num_predict: its default, 4
    assert spec["draft_accepted_count"] > 0
    after = scrape(daemon)
    for name, field in (("lm_draft_tokens_total", "draft_count"),
                        ("lm_draft_accepted_tokens_total", "draft_accepted_count")):
        was = find(before, name, model="smollm2-spec:latest")
        assert find(after, name, model="smollm2-spec:latest") == [(was[0] if was else 0) + spec[field]]
    status, ps = daemon.get("/api/ps")
    loaded = {m["name"]: m for m in ps["models"]}
    assert loaded["smollm2-spec:latest"]["speculative"]["draft_accepted_count"] >= spec["draft_accepted_count"]
    r = daemon.cli("run", "smollm2-spec", PROMPT, "--verbose")
    assert r.returncode == 0, r.stderr
    assert "draft acceptance:     " in r.stderr and "eval rate" in r.stderr
    off = generate(daemon, "smollm2-spec", draft_num_predict=0)  # 0 turns it off, as in Ollama
    assert "draft_count" not in off and off["context"] == spec["context"]


@pytest.mark.parametrize("options, words", [
    ({"draft_num_predict": -1}, "draft_num_predict"),
    ({"draft_num_predict": 33}, "draft_num_predict"),
    ({"draft_num_predict": 10**12}, "draft_num_predict"),
    ({"draft_num_predict": "4"}, "draft_num_predict"),
    ({"draft_type": "eagle3"}, "draft_type"),
    ({"draft_type": 1}, "draft_type"),
])
def test_bad_draft_options_are_refused(daemon, smollm2, options, words):
    status, body = daemon.post("/api/generate", {"model": smollm2, "prompt": "hi", "stream": False,
                                                 "options": options})
    assert status == 400, body
    assert words in body["error"]
