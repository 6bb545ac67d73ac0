"""Soak: 64 concurrent clients against a tiny model for a bounded time, loopback only.

Every request must be answered: 200, or the deliberate 503 "server busy" when the queue is full
(LM_MAX_QUEUE is small here on purpose). No runner may leak or be restarted, and the daemon's file
descriptors and memory must stay within stated bounds after a warm-up. LM_SOAK_SECONDS sets the
duration of the measured phase (default 90). Run it alone with `pytest -m soak -s`.
"""

from __future__ import annotations

import http.client
import json
import os
import random
import threading
import time
from collections import Counter

import pytest

from tests.conftest import Daemon
from tests.test_faults import fd_count, runner_pids

CLIENTS = 64
SECONDS = float(os.environ.get("LM_SOAK_SECONDS", "90"))
WARMUP_S = 10.0
FD_GROWTH_MAX = 16  # descriptors, daemon, idle after the load vs idle after the warm-up
RSS_GROWTH_MAX = 64 << 20  # bytes, daemon and runner each, same comparison

pytestmark = pytest.mark.soak


def rss(pid: int) -> int:
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class Client(threading.Thread):
    def __init__(self, d: Daemon, index: int, stop_at: list[float], stats: Counter, errors: list, lock):
        super().__init__(daemon=True)
        self.d, self.rng, self.stop_at = d, random.Random(index), stop_at
        self.stats, self.errors, self.lock = stats, errors, lock
        self.keepalive = index % 2 == 0  # half reuse one connection, half connect per request
        self.conn: http.client.HTTPConnection | None = None

    def _conn(self) -> http.client.HTTPConnection:
        if self.conn is None or not self.keepalive:
            if self.conn is not None:
                self.conn.close()
            self.conn = http.client.HTTPConnection("127.0.0.1", self.d.port, timeout=120)
        return self.conn

    def _request(self) -> tuple[str, str, dict | None, bool]:
        n = self.rng.randint(1, 48)
        chat = [{"role": "user", "content": self.rng.choice(["hi", "the sky", "tell me a story", "why"])}]
        kind = self.rng.random()
        if kind < 0.25:
            return "gen-stream", "/api/generate", {"model": "tiny", "prompt": "once upon", "options": {"num_predict": n}}, True
        if kind < 0.40:
            return "gen", "/api/generate", {"model": "tiny", "prompt": "a b c", "stream": False,
                                            "options": {"num_predict": n}}, False
        if kind < 0.55:
            return "chat-stream", "/api/chat", {"model": "tiny", "messages": chat, "options": {"num_predict": n}}, True
        if kind < 0.65:
            return "openai", "/v1/chat/completions", {"model": "tiny", "messages": chat, "max_tokens": n}, False
        if kind < 0.72:
            return "openai-stream", "/v1/chat/completions", {"model": "tiny", "messages": chat, "max_tokens": n,
                                                             "stream": True}, True
        if kind < 0.77:
            return "hangup", "/api/generate", {"model": "tiny", "prompt": "go", "options": {"num_predict": 200}}, True
        if kind < 0.87:
            return "tags", "/api/tags", None, False
        if kind < 0.93:
            return "ps", "/api/ps", None, False
        return "show", "/api/show", {"model": "tiny"}, False

    def run(self) -> None:
        while time.time() < self.stop_at[0]:
            label, path, body, streamed = self._request()
            try:
                conn = self._conn()
                if body is None:
                    conn.request("GET", path)
                else:
                    conn.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
                resp = conn.getresponse()
                if label == "hangup" and resp.status == 200:
                    resp.readline()
                    conn.close()  # the client goes away mid-stream
                    self.conn = None
                    self._count(label, "hung up")
                    continue
                raw = resp.read()
                status = resp.status
                if status == 503:
                    ok = "busy" in raw.decode(errors="replace")
                elif status == 200:
                    ok = self._complete(path, raw, streamed)
                else:
                    ok = False
                self._count(label, status if ok else f"bad {status}: {raw[:200]!r}")
                if status == 503:
                    time.sleep(self.rng.uniform(0.05, 0.3))  # a polite client backs off when told busy
            except (OSError, http.client.HTTPException) as exc:
                self.conn = None
                self._count(label, f"error {type(exc).__name__}: {exc}")
        if self.conn is not None:
            self.conn.close()  # idle keep-alive connections would otherwise count as the daemon's descriptors

    @staticmethod
    def _complete(path: str, raw: bytes, streamed: bool) -> bool:
        text = raw.decode(errors="replace")
        if path.startswith("/v1/"):
            return text.rstrip().endswith("data: [DONE]") if streamed else '"choices"' in text
        if streamed:
            lines = [json.loads(x) for x in text.splitlines() if x.strip()]
            return bool(lines) and lines[-1].get("done") is True
        return text.startswith("{")

    def _count(self, label: str, outcome) -> None:
        with self.lock:
            self.stats[(label, outcome)] += 1
            if not isinstance(outcome, int) and outcome != "hung up":
                self.errors.append(f"{label}: {outcome}")


def test_soak(make_daemon, tiny_gguf, tmp_path, capsys):
    d = make_daemon({"LM_NUM_PARALLEL": "4", "LM_MAX_QUEUE": "40", "LM_CONTEXT_LENGTH": "512",
                     "LM_KEEP_ALIVE": "30m"})
    d.create_from_gguf("tiny", tiny_gguf)
    assert d.post("/api/generate", {"model": "tiny", "prompt": ""})[0] == 200
    (runner,) = runner_pids(d.proc.pid)
    stats: Counter = Counter()
    errors: list[str] = []
    lock = threading.Lock()
    samples = []

    def phase(seconds: float) -> None:
        stop_at = [time.time() + seconds]
        clients = [Client(d, i, stop_at, stats, errors, lock) for i in range(CLIENTS)]
        for c in clients:
            c.start()
        while any(c.is_alive() for c in clients):
            time.sleep(1.0)
            pids = runner_pids(d.proc.pid)
            assert pids == [runner], f"runners changed under load: {pids} (was {runner})"
            samples.append((round(time.time(), 1), fd_count(d.proc.pid), rss(d.proc.pid), rss(runner)))
            if time.time() > stop_at[0] + 120:
                pytest.fail("clients did not finish within 2 minutes of the end")
        for c in clients:
            c.join()

    phase(WARMUP_S)
    time.sleep(1.0)
    base = (fd_count(d.proc.pid), rss(d.proc.pid), rss(runner))
    stats.clear()
    t0 = time.time()
    phase(SECONDS)
    elapsed = time.time() - t0
    time.sleep(1.0)
    end = (fd_count(d.proc.pid), rss(d.proc.pid), rss(runner))
    assert runner_pids(d.proc.pid) == [runner]

    total = sum(stats.values())
    by_status = Counter()
    for (_, outcome), n in stats.items():
        by_status[outcome if isinstance(outcome, int) or outcome == "hung up" else "failed"] += n
    summary = {
        "clients": CLIENTS, "seconds": round(elapsed, 1), "requests": total,
        "per_second": round(total / elapsed, 1), "by_status": dict(by_status),
        "by_kind": {f"{k}:{o}": n for (k, o), n in sorted(stats.items(), key=str) if isinstance(o, int)},
        "daemon_fds": [base[0], end[0], max(s[1] for s in samples)],
        "daemon_rss_mib": [round(base[1] / 2**20, 1), round(end[1] / 2**20, 1), round(max(s[2] for s in samples) / 2**20, 1)],
        "runner_rss_mib": [round(base[2] / 2**20, 1), round(end[2] / 2**20, 1), round(max(s[3] for s in samples) / 2**20, 1)],
    }
    (tmp_path / "soak.json").write_text(json.dumps({**summary, "samples": samples}, indent=1))
    with capsys.disabled():
        print(f"\nsoak: {json.dumps(summary)}")

    assert not errors, f"{len(errors)} requests not answered properly, e.g. {errors[:5]}"
    assert by_status[200] > 0 and total > 10 * CLIENTS
    assert end[0] <= base[0] + FD_GROWTH_MAX, summary
    assert end[1] <= base[1] + RSS_GROWTH_MAX, summary
    assert end[2] <= base[2] + RSS_GROWTH_MAX, summary

    # Unloading leaves no runner behind.
    assert d.post("/api/generate", {"model": "tiny", "prompt": "", "keep_alive": 0})[0] == 200
    deadline = time.time() + 10
    while runner_pids(d.proc.pid) and time.time() < deadline:
        time.sleep(0.1)
    assert not runner_pids(d.proc.pid)
