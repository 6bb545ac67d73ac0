"""Faults against real processes: SIGTERM and SIGKILL of the daemon, disk full, client disconnect storms.

(A runner crash mid-stream is in test_generate.py.)
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import random
import resource
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import REPO, Daemon


# ---------------------------------------------------------------- process helpers

def _state(pid: int) -> str | None:
    """The process state letter, None when there is no such process."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return None


def alive(pid: int) -> bool:
    return _state(pid) not in (None, "Z", "X")


def runner_pids(daemon_pid: int) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmd = f.read()
        except OSError:
            continue
        if ppid == daemon_pid and b"runner.engine" in cmd and alive(int(entry)):
            pids.append(int(entry))
    return pids


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def wait_until(predicate, timeout: float, step: float = 0.05) -> bool:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return predicate()


def open_stream(d: Daemon, body: dict) -> http.client.HTTPResponse:
    conn = http.client.HTTPConnection("127.0.0.1", d.port, timeout=60)
    conn.request("POST", "/api/generate", json.dumps(body), {"Content-Type": "application/json"})
    return conn.getresponse()


def load_tiny(d: Daemon, gguf: Path) -> int:
    d.create_from_gguf("tiny", gguf)
    status, _ = d.post("/api/generate", {"model": "tiny", "prompt": ""})
    assert status == 200
    (pid,) = runner_pids(d.proc.pid)
    return pid


# ---------------------------------------------------------------- graceful shutdown

def test_sigterm_lets_in_flight_requests_finish_then_unloads(make_daemon, tiny_gguf):
    d = make_daemon({"LM_SHUTDOWN_TIMEOUT": "60s", "LM_CONTEXT_LENGTH": "4096"})
    runner = load_tiny(d, tiny_gguf)
    n = 300  # streamed, about half a second here: still running when the signal comes
    resp = open_stream(d, {"model": "tiny", "prompt": "hi", "options": {"num_predict": n, "temperature": 0}})
    first = json.loads(resp.readline())
    assert first["done"] is False
    d.proc.send_signal(signal.SIGTERM)
    time.sleep(0.3)
    with pytest.raises(OSError):  # no new connections while draining
        socket.create_connection(("127.0.0.1", d.port), timeout=2).close()
    lines = [json.loads(x) for x in resp.read().splitlines() if x.strip()]
    assert lines and lines[-1]["done"] is True, lines[-1:]  # the in-flight answer completed
    assert d.proc.wait(timeout=60) == 0
    assert wait_until(lambda: not alive(runner), 5), "runner outlived the daemon"
    log = d.log_path.read_text()
    assert "shutting down" in log and "1 request(s) in flight" in log


def sigterm_during_an_endless_stream(d: Daemon, gguf: Path) -> tuple[int, http.client.HTTPResponse, float]:
    """Starts a stream that never ends by itself, then SIGTERMs the daemon: (runner pid, stream, when)."""
    runner = load_tiny(d, gguf)
    # Greedy from "hi", the tiny model never says EOS (checked for 20,000 tokens): it runs until stopped.
    resp = open_stream(d, {"model": "tiny", "prompt": "hi", "options": {"num_predict": -1, "temperature": 0}})
    json.loads(resp.readline())
    t0 = time.time()
    d.proc.send_signal(signal.SIGTERM)
    return runner, resp, t0


def test_sigterm_cancels_what_does_not_finish_in_time(make_daemon, tiny_gguf):
    d = make_daemon({"LM_SHUTDOWN_TIMEOUT": "1s", "LM_CONTEXT_LENGTH": "512"})
    runner, resp, t0 = sigterm_during_an_endless_stream(d, tiny_gguf)
    try:
        rest = resp.read()
    except http.client.IncompleteRead as exc:  # cut mid-chunk
        rest = exc.partial
    assert b'"done":true' not in rest
    assert d.proc.wait(timeout=20) == 0
    assert time.time() - t0 < 10
    assert wait_until(lambda: not alive(runner), 5)


def test_a_second_signal_stops_at_once(make_daemon, tiny_gguf):
    d = make_daemon({"LM_SHUTDOWN_TIMEOUT": "120s", "LM_CONTEXT_LENGTH": "512"})
    runner, resp, t0 = sigterm_during_an_endless_stream(d, tiny_gguf)
    time.sleep(0.5)
    d.proc.send_signal(signal.SIGINT)
    d.proc.wait(timeout=20)
    assert time.time() - t0 < 10
    assert wait_until(lambda: not alive(runner), 5)
    resp.close()


def test_sigkill_of_the_daemon_leaves_no_runner(make_daemon, tiny_gguf):
    d = make_daemon()
    runner = load_tiny(d, tiny_gguf)
    d.proc.kill()
    d.proc.wait()
    assert wait_until(lambda: not alive(runner), 10), "runner outlived a SIGKILLed daemon"


def test_client_hanging_up_during_a_load_leaves_no_runner(make_daemon, tiny_gguf):
    d = make_daemon()
    d.create_from_gguf("tiny", tiny_gguf)
    for _ in range(2):
        # The runner takes a few hundred milliseconds to start; the client is gone long before.
        _hang_up(d.port, json.dumps({"model": "tiny", "prompt": "hi"}).encode(), "after-a-moment")
    assert wait_until(lambda: not runner_pids(d.proc.pid), 10), "a cancelled load left its runner running"
    status, _ = d.post("/api/generate", {"model": "tiny", "prompt": "hi", "stream": False,
                                         "options": {"num_predict": 2}})
    assert status == 200 and len(runner_pids(d.proc.pid)) == 1


# ---------------------------------------------------------------- store consistency under SIGKILL

def check_store(models: Path) -> None:
    """Every manifest parses and every blob it names is there with the right content."""
    for path in (models / "manifests").glob("*/*/*/*"):
        if any(p.startswith(".") for p in path.relative_to(models / "manifests").parts) or not path.is_file():
            continue
        manifest = json.loads(path.read_bytes())
        for layer in [manifest["config"], *manifest["layers"]]:
            blob = models / "blobs" / layer["digest"].replace(":", "-")
            assert blob.is_file(), f"{path} names missing {blob.name}"
            assert "sha256:" + hashlib.sha256(blob.read_bytes()).hexdigest() == layer["digest"], blob
            assert blob.stat().st_size == layer["size"]
    for blob in (models / "blobs").glob("sha256-*"):  # no torn blob under a real name
        assert "sha256-" + hashlib.sha256(blob.read_bytes()).hexdigest() == blob.name, blob


def unreferenced(models: Path) -> set[str]:
    used = set()
    for path in (models / "manifests").glob("*/*/*/*"):
        if path.is_file() and not path.name.startswith("."):
            m = json.loads(path.read_bytes())
            used |= {layer["digest"].replace(":", "-") for layer in [m["config"], *m["layers"]]}
    return {b.name for b in (models / "blobs").glob("sha256-*")} - used


def partials(models: Path) -> list[Path]:
    return list(models.rglob(".partial-*"))


def age(paths, seconds: float) -> None:
    past = time.time() - seconds
    for p in paths:
        os.utime(p, (past, past))


def restart(models: Path, env: dict | None = None) -> Daemon:
    return Daemon(models, env).start()


def test_sigkill_mid_upload_leaves_only_a_temp_file_that_startup_removes(make_daemon):
    d = make_daemon()
    models = d.models_dir
    data = os.urandom(24 << 20)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    conn = http.client.HTTPConnection("127.0.0.1", d.port, timeout=30)
    conn.putrequest("POST", f"/api/blobs/{digest}")
    conn.putheader("Content-Length", str(len(data)))
    conn.endheaders()
    conn.send(data[: 8 << 20])
    assert wait_until(lambda: any(p.stat().st_size > 0 for p in partials(models)), 10)
    d.kill()
    conn.close()
    assert not (models / "blobs" / digest.replace(":", "-")).exists()
    left = partials(models)
    assert left
    d2 = restart(models)  # young, but its writer (named in it) is gone: removed at once
    d2.stop()
    assert not partials(models)
    check_store(models)


def _churn(d: Daemon, stop: threading.Event, base: str) -> None:
    i = 0
    while not stop.is_set():
        i += 1
        try:
            # Layers unique to each model: a blob shared with a model another thread deletes meanwhile can be
            # removed under a concurrent create (a store race, reported), which is not what is tested here.
            d.post("/api/create", {"model": f"{base}-{i}", "from": "tiny", "system": f"{base}: you are number {i} " * 50,
                                   "parameters": {"seed": i * 100 + int(base[1:])}, "stream": False}, timeout=5)
            d.post("/api/copy", {"source": f"{base}-{i}", "destination": f"{base}-copy-{i}"}, timeout=5)
            d.request("DELETE", "/api/delete", {"model": f"{base}-{i - 1}"}, timeout=5)
            d.request("DELETE", "/api/delete", {"model": f"{base}-copy-{i - 2}"}, timeout=5)
        except OSError:
            return  # the daemon is gone


def test_sigkill_during_create_copy_delete_keeps_the_store_consistent(make_daemon, tiny_gguf):
    d = make_daemon()
    models = d.models_dir
    d.create_from_gguf("tiny", tiny_gguf)
    rng = random.Random(7)
    for round_ in range(3):
        stop = threading.Event()
        workers = [threading.Thread(target=_churn, args=(d, stop, f"m{round_}{k}")) for k in range(3)]
        for w in workers:
            w.start()
        time.sleep(rng.uniform(0.3, 1.2))
        d.kill()
        stop.set()
        for w in workers:
            w.join(timeout=10)
        check_store(models)  # right after the kill: nothing torn, nothing dangling from a manifest
        age(partials(models), 120)
        d = restart(models, {"LM_PRUNE_GRACE": "0"})
        assert not partials(models)
        assert not unreferenced(models)  # blobs of half-done creates and deletes are gone
        status, body = d.post("/api/generate", {"model": "tiny", "prompt": "hi", "stream": False,
                                                "options": {"num_predict": 2}})
        assert status == 200, body
    d.stop()
    check_store(models)


def test_unreferenced_blobs_are_pruned_only_after_the_grace_period(make_daemon):
    d = make_daemon()
    models = d.models_dir
    data = b"an upload waiting for its create"
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    assert d.request("POST", f"/api/blobs/{digest}", data=data)[0] == 201
    blob = models / "blobs" / digest.replace(":", "-")
    d.stop()
    for env in ({}, {"LM_PRUNE_GRACE": "0", "LM_NOPRUNE": "1"}):
        restart(models, env).stop()
        assert blob.exists(), env  # young (default grace 1h) or pruning off
    restart(models, {"LM_PRUNE_GRACE": "0"}).stop()
    assert not blob.exists()


# ---------------------------------------------------------------- disk full

class LimitedDaemon(Daemon):
    """A daemon whose files may not grow past `fsize` bytes (RLIMIT_FSIZE: writes fail with EFBIG)."""

    def __init__(self, models_dir: Path, fsize: int, env: dict | None = None):
        super().__init__(models_dir, env)
        self.fsize = fsize

    def start(self) -> "LimitedDaemon":
        self.log = open(self.log_path, "ab")

        def limit():
            resource.setrlimit(resource.RLIMIT_FSIZE, (self.fsize, self.fsize))

        self.proc = subprocess.Popen([sys.executable, "-m", "runner.cli", "serve"], cwd=REPO, env=self.env,
                                     stdout=self.log, stderr=subprocess.STDOUT, preexec_fn=limit)
        assert wait_until(lambda: self._up(), 30, 0.05), self.log_path.read_text()[-2000:]
        return self

    def _up(self) -> bool:
        try:
            urllib.request.urlopen(self.url + "/api/version", timeout=1).close()
            return True
        except OSError:
            return False


def test_disk_full_while_writing_a_blob(tmp_path, tiny_gguf):
    models = tmp_path / "models"
    d = LimitedDaemon(models, fsize=16 << 20).start()
    try:
        big = os.urandom(24 << 20)
        digest = "sha256:" + hashlib.sha256(big).hexdigest()
        status, body = d.request("POST", f"/api/blobs/{digest}", data=big)
        assert status == 507 and "storage" in body["error"], (status, body)
        assert not (models / "blobs" / digest.replace(":", "-")).exists()
        assert not partials(models)  # nothing half-written left behind
        # The daemon is fine, and what fits still goes in.
        d.create_from_gguf("tiny", tiny_gguf)
        status, body = d.post("/api/generate", {"model": "tiny", "prompt": "hi", "stream": False,
                                                "options": {"num_predict": 2}})
        assert status == 200
        check_store(models)
    finally:
        d.stop()


# ---------------------------------------------------------------- client disconnect storms

def _hang_up(port: int, body: bytes, when: str) -> None:
    s = socket.create_connection(("127.0.0.1", port), timeout=30)
    try:
        s.sendall(b"POST /api/generate HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                  b"Content-Length: %d\r\n\r\n" % len(body) + (body if when != "mid-body" else body[:5]))
        if when == "after-a-moment":
            time.sleep(0.15)
        elif when == "after-first-chunk":
            s.recv(1)
        elif when == "mid-response":
            s.recv(4096)
            s.recv(4096)
    except OSError:
        pass
    finally:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")  # RST
        s.close()


def test_client_disconnect_storm(make_daemon, tiny_gguf):
    d = make_daemon({"LM_NUM_PARALLEL": "4", "LM_CONTEXT_LENGTH": "512"})
    runner = load_tiny(d, tiny_gguf)
    fds_before = fd_count(d.proc.pid)
    body = json.dumps({"model": "tiny", "prompt": "go", "options": {"num_predict": -1}}).encode()
    kinds = ["immediately", "mid-body", "after-first-chunk", "mid-response"]
    for _ in range(3):
        threads = [threading.Thread(target=_hang_up, args=(d.port, body, kinds[i % 4])) for i in range(48)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)

    def settled() -> bool:
        with urllib.request.urlopen(d.url + "/metrics", timeout=10) as resp:
            text = resp.read().decode()
        lines = [x for x in text.splitlines() if x.startswith(("lm_requests_active{", "lm_queue_depth{"))]
        return bool(lines) and all(x.endswith(" 0.0") for x in lines)

    assert wait_until(settled, 20, 0.2), "hung-up requests still hold the runner"
    t0 = time.time()
    status, out = d.post("/api/generate", {"model": "tiny", "prompt": "still there?", "stream": False,
                                           "options": {"num_predict": 4}})
    assert status == 200 and out["done"] and time.time() - t0 < 10
    assert runner_pids(d.proc.pid) == [runner]  # the same runner: nothing crashed or reloaded
    assert wait_until(lambda: fd_count(d.proc.pid) <= fds_before + 4, 10), (fds_before, fd_count(d.proc.pid))


# ---------------------------------------------------------------- found by fuzzing

def test_engine_failure_does_not_wedge_the_runner(make_daemon, tiny_gguf):
    d = make_daemon({"LM_SHUTDOWN_TIMEOUT": "1s"})
    d.create_from_gguf("tiny", tiny_gguf)
    status, out = d.post("/api/generate", {"model": "tiny", "prompt": "x", "context": [10_990_120], "stream": False})
    assert status == 400 and "vocabulary" in out["error"]
    status, _ = d.post("/api/generate", {"model": "tiny", "prompt": "hi", "stream": False,
                                         "options": {"num_predict": 2}}, timeout=3)
    assert status == 200
