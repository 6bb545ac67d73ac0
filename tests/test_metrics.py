"""Observability against the real daemon: /metrics, request ids, structured logs, LM_DEBUG."""

from __future__ import annotations

import http.client
import json
import socket
import time
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families



def scrape(d) -> dict[tuple, float]:
    """{(sample name, sorted label items): value}."""
    with urllib.request.urlopen(d.url + "/metrics", timeout=30) as resp:
        assert resp.headers["Content-Type"].startswith("text/plain")
        text = resp.read().decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def find(samples: dict, name: str, **labels) -> list[float]:
    want = set(labels.items())
    return [v for (n, ls), v in samples.items() if n == name and want <= set(ls)]


def test_requests_are_counted_by_route_and_status(daemon, tiny):
    daemon.post("/api/generate", {"model": tiny, "prompt": "hi", "stream": False, "options": {"num_predict": 2}})
    daemon.get("/api/does-not-exist-" + "x" * 20)
    daemon.request("HEAD", "/api/blobs/sha256:" + "0" * 64)
    m = scrape(daemon)
    assert find(m, "lm_http_requests_total", route="/api/generate", method="POST", status="200")[0] >= 1
    assert find(m, "lm_http_requests_total", route="unmatched", status="404")[0] >= 1  # labels stay few
    assert find(m, "lm_http_requests_total", route="/api/blobs/{digest}", method="HEAD", status="404")
    assert find(m, "lm_http_request_duration_seconds_count", route="/api/generate")[0] >= 1
    assert not [k for k in m if "does-not-exist" in str(k)]


def test_loaded_models_and_memory(daemon, tiny):
    daemon.post("/api/generate", {"model": tiny, "prompt": "", "keep_alive": "5m"})  # load
    m = scrape(daemon)
    assert find(m, "lm_models_loaded")[0] >= 1
    assert find(m, "lm_model_memory_bytes", model="tiny:latest", kind="estimated")[0] > 0
    assert find(m, "lm_model_memory_bytes", model="tiny:latest", kind="rss")[0] > 1_000_000
    assert find(m, "process_open_fds")[0] > 0 and find(m, "process_resident_memory_bytes")[0] > 0
    assert find(m, "lm_build_info")


def test_tokens_and_latency_histograms(daemon, tiny):
    before = scrape(daemon)
    status, body = daemon.post("/api/generate", {"model": tiny, "prompt": "the sky is", "stream": False,
                                                 "options": {"num_predict": 5, "temperature": 0}})
    assert status == 200
    after = scrape(daemon)

    def delta(name, **labels):
        return sum(find(after, name, **labels)) - sum(find(before, name, **labels))

    assert delta("lm_prompt_tokens_total", model="tiny:latest") == body["prompt_eval_count"]
    assert delta("lm_generated_tokens_total", model="tiny:latest") == body["eval_count"]
    assert delta("lm_time_to_first_token_seconds_count", model="tiny:latest") == 1
    assert delta("lm_time_per_output_token_seconds_count", model="tiny:latest") == 1
    assert 0 < delta("lm_time_to_first_token_seconds_sum", model="tiny:latest") <= body["total_duration"] / 1e9


def test_queue_depth_while_busy(make_daemon, tiny_gguf):
    d = make_daemon({"LM_NUM_PARALLEL": "1", "LM_CONTEXT_LENGTH": "2048"})
    d.create_from_gguf("tiny", tiny_gguf)
    d.post("/api/generate", {"model": "tiny", "prompt": ""})  # load first
    conns = []
    for _ in range(3):  # requests sent, answers never read: one runs, two wait
        conn = http.client.HTTPConnection("127.0.0.1", d.port, timeout=60)
        # Greedy from "hi" the tiny model never says EOS: each request runs until its client goes.
        conn.request("POST", "/api/generate", json.dumps({"model": "tiny", "prompt": "hi",
                                                          "options": {"num_predict": -1, "temperature": 0}}),
                     {"Content-Type": "application/json"})
        conns.append(conn)
    deadline = time.time() + 20
    seen = None
    while time.time() < deadline:
        m = scrape(d)
        queued = find(m, "lm_queue_depth", model="tiny:latest")
        active = find(m, "lm_requests_active", model="tiny:latest")
        if queued and active and queued[0] == 2 and active[0] == 1:
            seen = (queued[0], active[0])
            break
        time.sleep(0.1)
    for conn in conns:  # every client hangs up
        conn.sock.shutdown(socket.SHUT_RDWR)
        conn.close()
    assert seen, "never saw one active request and two queued"
    deadline = time.time() + 20
    while time.time() < deadline:  # the hung-up clients' requests are released
        m = scrape(d)
        if find(m, "lm_queue_depth", model="tiny:latest") == [0] and find(m, "lm_requests_active",
                                                                          model="tiny:latest") == [0]:
            break
        time.sleep(0.2)
    else:
        pytest.fail(f"requests not released: {find(m, 'lm_queue_depth')} {find(m, 'lm_requests_active')}")


def test_request_id_is_echoed_and_logged(daemon):
    req = urllib.request.Request(daemon.url + "/api/tags", headers={"X-Request-Id": "trace-42.a_b"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        assert resp.headers["X-Request-Id"] == "trace-42.a_b"
    req = urllib.request.Request(daemon.url + "/api/tags", headers={"X-Request-Id": "bad id\twith spaces" * 10})
    with urllib.request.urlopen(req, timeout=30) as resp:
        fresh = resp.headers["X-Request-Id"]
    assert fresh and " " not in fresh and len(fresh) <= 64
    time.sleep(0.2)
    log = daemon.log_path.read_text(errors="replace")
    assert "[trace-42.a_b]: GET /api/tags 200" in log
    assert f"[{fresh}]" in log


def test_json_logs_carry_request_ids(make_daemon, tiny_gguf):
    d = make_daemon({"LM_LOG_FORMAT": "json"})
    d.create_from_gguf("tiny", tiny_gguf)
    req = urllib.request.Request(d.url + "/api/generate", method="POST", headers={
        "X-Request-Id": "json-rid-1", "Content-Type": "application/json"},
        data=json.dumps({"model": "tiny", "prompt": "hi", "stream": False, "options": {"num_predict": 2}}).encode())
    urllib.request.urlopen(req, timeout=60).read()
    time.sleep(0.2)
    records = [json.loads(line) for line in d.log_path.read_text().splitlines() if line.startswith("{")]
    assert records and all({"time", "level", "logger", "msg"} <= set(r) for r in records)
    mine = [r for r in records if r.get("request_id") == "json-rid-1"]
    access = [r for r in mine if r["logger"] == "lm.access"]
    assert access and access[0]["status"] == 200 and access[0]["path"] == "/api/generate"
    assert any(r["logger"] == "lm.scheduler" for r in mine)  # the model load, logged inside the request


def test_lm_debug_shows_runner_output(make_daemon, tiny_gguf):
    d = make_daemon({"LM_DEBUG": "1"})
    d.create_from_gguf("tiny", tiny_gguf)
    status, _ = d.post("/api/generate", {"model": "tiny", "prompt": "hi", "stream": False,
                                         "options": {"num_predict": 2}})
    assert status == 200
    time.sleep(0.2)
    log = d.log_path.read_text(errors="replace")
    assert "[runner " in log  # the runner's stderr, passed through only in debug
