"""Beyond one daemon, with real processes on loopback: a model split across two `lm worker` processes
(ggml's RPC server, serving their CPU backend), and two daemons behind a real nginx running
docs/nginx-fleet.conf.

The pure decisions (placement over workers, the layer split, replicas) are in test_fleet_logic.py.
"""

from __future__ import annotations

import concurrent.futures
import http.client
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from runner.ggml.rpc_client import WorkerError, parse_endpoint, probe
from runner.engine.protocol import CompletionRequest, FinalRecord, SamplingOptions
from tests.conftest import REPO, Daemon, create_bundled, free_port
from tests.test_faults import runner_pids

NGINX = shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if os.path.exists(p)), None)
needs_nginx = pytest.mark.skipif(NGINX is None,
                                 reason="no nginx: scripts/test.sh installs Debian's (apt-get install nginx)")
GREEDY = {"temperature": 0, "seed": 1, "num_predict": 24}
PROMPT = "Name three colours of the rainbow."


class Worker:
    """`lm worker` on a loopback port, serving its CPU backend."""

    def __init__(self, port: int, log_path: Path):
        self.port, self.log_path = port, log_path
        self.endpoint = f"127.0.0.1:{port}"
        self.proc: subprocess.Popen | None = None

    def start(self) -> "Worker":
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "runner.cli", "worker", "--listen", self.endpoint,
                                      "--threads", "1"], cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        deadline = time.time() + 60
        while time.time() < deadline:
            assert self.proc.poll() is None, self.log_path.read_text()[-2000:]
            try:
                probe(parse_endpoint(self.endpoint), timeout=2)
                return self
            except WorkerError:
                time.sleep(0.1)
        raise AssertionError(f"worker on {self.endpoint} did not start")

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)


@pytest.fixture
def workers(tmp_path):
    started = [Worker(free_port(), tmp_path / f"worker-{i}.log").start() for i in range(2)]
    yield started
    for w in started:
        w.kill()


def keepalive_peer_ports() -> set[int]:
    """Remote ports of this host's established TCP connections whose keepalive timer runs (/proc/net/tcp:
    state 01, timer 2)."""
    ports = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[3] == "01" and fields[5].split(":")[0] == "02":
            ports.add(int(fields[2].split(":")[1], 16))
    return ports


def generate(d: Daemon, model: str, **extra) -> tuple[int, dict]:
    return d.post("/api/generate", {"model": model, "prompt": PROMPT, "stream": False, "options": GREEDY, **extra},
                  timeout=240)


def test_worker_refuses_a_public_bind_without_the_flag(tmp_path):
    result = subprocess.run([sys.executable, "-m", "runner.cli", "worker", "--listen", "0.0.0.0:50999"], cwd=REPO,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1 and "no authentication" in result.stderr and "--allow-public" in result.stderr
    result = subprocess.run([sys.executable, "-m", "runner.cli", "worker", "--listen", "127.0.0.1:1",
                             "--device", "GPU9"], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1 and "unknown device 'GPU9'" in result.stderr and "CPU" in result.stderr


def test_a_model_split_across_two_workers_answers_as_the_local_run(make_daemon, smollm2_path, workers):
    settings = {"LM_NUM_PARALLEL": "1", "LM_CONTEXT_LENGTH": "1024"}
    local = make_daemon(settings)
    create_bundled(local, "smollm2:135m", smollm2_path)
    status, expected = generate(local, "smollm2:135m")
    assert status == 200 and expected["response"].strip()
    local.stop()

    # LM_SCHED_SPREAD: the model would fit one worker; spread it over both
    remote = make_daemon({**settings, "LM_RPC_WORKERS": ",".join(w.endpoint for w in workers),
                          "LM_SCHED_SPREAD": "1"})
    create_bundled(remote, "smollm2:135m", smollm2_path)
    status, body = generate(remote, "smollm2:135m")
    assert status == 200, body
    assert body["response"] == expected["response"]  # the same greedy tokens as on this host alone

    status, ps = remote.get("/api/ps")
    devices = ps["models"][0]["gpus"]
    assert [g["name"] for g in devices] == [f"RPC[{w.endpoint}]#0" for w in workers]
    assert all(g["layers"] > 0 for g in devices) and sum(g["layers"] for g in devices) == 31  # 30 + output
    log = remote.log_path.read_text()
    assert re.search(rf"loading smollm2:135m .*RPC\[{workers[0].endpoint}\]#0 .*\(\d+ layers\), "
                     rf"RPC\[{workers[1].endpoint}\]#0 .*\(\d+ layers\)", log)
    assert "RPC worker" not in log  # no worker error so far
    # the runner's connections to the workers probe their peer (a vanished host fails them, not hangs)
    assert {w.port for w in workers} <= keepalive_peer_ports()
    listing = remote.cli("ps")
    assert listing.returncode == 0 and f"RPC[{workers[1].endpoint}]#0" in listing.stdout

    # A worker dies: the next request fails with a clear error (the runner loses its connection) ...
    workers[1].kill()
    status, body = generate(remote, "smollm2:135m")
    assert status >= 500 and "RPC worker" in body["error"], body
    assert "/" not in body["error"].split("(")[1].split(")")[0]  # no source path from the abort line
    # ... and so does each one while it stays down (the load checks the workers, with a timeout)
    t0 = time.time()
    status, body = generate(remote, "smollm2:135m")
    assert status >= 500 and f"RPC worker {workers[1].endpoint} is not reachable" in body["error"], body
    assert time.time() - t0 < 30
    assert remote.get("/api/version")[0] == 200  # the daemon itself never stalled

    # The worker is back: the model loads across both again, with the same answer
    workers[1].start()
    status, body = generate(remote, "smollm2:135m")
    assert status == 200 and body["response"] == expected["response"], body
    status, ps = remote.get("/api/ps")
    assert [g["name"] for g in ps["models"][0]["gpus"]] == [f"RPC[{w.endpoint}]#0" for w in workers]


# ---------------------------------------------------------------- a fleet behind nginx

class Nginx:
    """nginx in the foreground with docs/nginx-fleet.conf (its addresses swapped for ours) in a temp prefix."""

    def __init__(self, prefix: Path, upstreams: list[str]):
        self.prefix, self.port = prefix, free_port()
        text = (REPO / "docs" / "nginx-fleet.conf").read_text()
        text = text.replace("10.0.0.11:11434", upstreams[0]).replace("10.0.0.12:11434", upstreams[1])
        text = text.replace("127.0.0.1:8080", f"127.0.0.1:{self.port}")
        (prefix / "fleet.conf").write_text(text)
        temp = "".join(f"    {kind}_temp_path {prefix}/{kind};\n"
                       for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
        (prefix / "nginx.conf").write_text(
            f"worker_processes 1;\npid {prefix}/nginx.pid;\nerror_log {prefix}/error.log info;\n"
            "events { worker_connections 1024; }\n"
            f"http {{\n    access_log {prefix}/access.log;\n{temp}    include {prefix}/fleet.conf;\n}}\n")
        self.proc: subprocess.Popen | None = None

    def start(self) -> "Nginx":
        self.proc = subprocess.Popen([NGINX, "-p", str(self.prefix), "-c", str(self.prefix / "nginx.conf"),
                                      "-g", "daemon off;"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.time() + 20
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"nginx exited: {self.proc.stderr.read().decode()}")
            try:
                if self.get("/api/version")[0] == 200:
                    return self
            except OSError:
                time.sleep(0.05)
        raise AssertionError("nginx did not start")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGQUIT)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def request(self, method: str, path: str, body: dict | None = None, headers: dict | None = None,
                timeout: float = 120) -> tuple[int, str, bytes]:
        """(status, the daemon that answered, body)."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            data = json.dumps(body).encode() if body is not None else None
            conn.request(method, path, body=data, headers={"Content-Type": "application/json", **(headers or {})})
            resp = conn.getresponse()
            return resp.status, resp.getheader("X-LM-Upstream", ""), resp.read()
        finally:
            conn.close()

    def get(self, path: str):
        return self.request("GET", path, timeout=5)


@pytest.fixture
def fleet(make_daemon, tiny_gguf, tmp_path):
    daemons = [make_daemon({"LM_NUM_PARALLEL": "4", "LM_CONTEXT_LENGTH": "256"}) for _ in range(2)]
    for d in daemons:
        d.create_from_gguf("tiny", tiny_gguf)
    proxy = Nginx(tmp_path, [f"127.0.0.1:{d.port}" for d in daemons]).start()
    yield daemons, proxy
    proxy.stop()


def ask(proxy: Nginx, i: int, headers: dict | None = None) -> tuple[int, str, dict | None]:
    body = {"model": "tiny", "prompt": f"request {i}", "stream": False, "options": {"num_predict": 4, "seed": i}}
    try:
        status, upstream, raw = proxy.request("POST", "/api/generate", body, headers, timeout=120)
    except (OSError, http.client.HTTPException):
        return 0, "", None
    try:
        return status, upstream, json.loads(raw)
    except ValueError:
        return status, upstream, None


@needs_nginx
def test_sixty_four_concurrent_requests_spread_over_both_daemons(fleet):
    daemons, proxy = fleet
    with concurrent.futures.ThreadPoolExecutor(64) as pool:
        results = list(pool.map(lambda i: ask(proxy, i), range(64), timeout=300))
    assert all(status == 200 and body and body["done"] for status, _, body in results), results
    served = {upstream for _, upstream, _ in results}
    assert served == {f"127.0.0.1:{d.port}" for d in daemons}  # least_conn used both
    # streaming passes through unbuffered: an NDJSON stream arrives as lines, the last one done
    status, _, raw = proxy.request("POST", "/api/generate",
                                   {"model": "tiny", "prompt": "hi", "options": {"num_predict": 3}})
    lines = [json.loads(line) for line in raw.splitlines() if line.strip()]
    assert status == 200 and len(lines) >= 2 and lines[-1]["done"]


@needs_nginx
def test_requests_naming_a_model_stay_on_one_daemon(fleet):
    daemons, proxy = fleet
    results = [ask(proxy, i, {"X-LM-Model": "tiny"}) for i in range(6)]
    assert all(status == 200 for status, _, _ in results)
    assert len({upstream for _, upstream, _ in results}) == 1  # hashed on the model: loaded on one daemon only
    loaded = [bool(d.get("/api/ps")[1]["models"]) for d in daemons]
    assert sorted(loaded) == [False, True]


@needs_nginx
def test_a_daemon_killed_mid_run_sends_the_requests_not_yet_started_elsewhere(fleet):
    daemons, proxy = fleet
    victim, survivor = daemons
    killed_at: list[float] = []
    started: dict[int, float] = {}
    lock = threading.Lock()

    def one(i: int):
        if i == 24:  # a third of the way in, while requests are in flight on both
            victim.kill()
            killed_at.append(time.time())
        with lock:
            started[i] = time.time()
        return ask(proxy, i)

    t0 = time.time()
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        results = list(pool.map(one, range(64), timeout=300))
    assert time.time() - t0 < 300  # nothing hung
    assert killed_at
    after = [results[i] for i in range(64) if started[i] > killed_at[0]]
    assert len(after) >= 30
    # every request sent after the kill was answered, by the survivor
    assert all(status == 200 and body and body["done"] for status, _, body in after), after
    assert {upstream.split(", ")[-1] for _, upstream, _ in after} == {f"127.0.0.1:{survivor.port}"}
    # those in flight on the victim failed cleanly (a 502, or a cut connection), none hung
    for status, _, body in results:
        assert status in (0, 200, 502), (status, body)
    assert proxy.get("/api/version")[0] == 200


# ---------------------------------------------------------------- replicas and settings

def test_replicas_auto_with_one_device_is_one_copy(make_daemon, tiny_gguf):
    d = make_daemon({"LM_REPLICAS": "auto", "LM_NUM_PARALLEL": "2", "LM_CONTEXT_LENGTH": "256"})
    d.create_from_gguf("tiny", tiny_gguf)
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda i: d.post("/api/generate", {"model": "tiny", "prompt": f"r{i}", "stream": False,
                                                                     "options": {"num_predict": 3}}), range(4)))
    assert all(status == 200 and body["done"] for status, body in results), results
    model, = d.get("/api/ps")[1]["models"]
    assert "replicas" not in model and model["kv_cache"]["slots"] == 2  # one runner, as without the setting
    assert len(runner_pids(d.proc.pid)) == 1


@pytest.mark.parametrize("env, message", [
    ({"LM_REPLICAS": "two"}, "LM_REPLICAS must be auto or a positive integer"),
    ({"LM_REPLICAS": "0"}, "LM_REPLICAS must be auto or a positive integer"),
    ({"LM_RPC_WORKERS": "10.0.0.2"}, "LM_RPC_WORKERS: invalid RPC worker address '10.0.0.2'"),
])
def test_bad_fleet_settings_stop_the_daemon_with_a_message(tmp_path, env, message):
    result = subprocess.run([sys.executable, "-m", "runner.cli", "serve"], cwd=REPO, capture_output=True, text=True,
                            timeout=60, env={**os.environ, "LM_HOST": f"127.0.0.1:{free_port()}",
                                             "LM_MODELS": str(tmp_path), **env})
    assert result.returncode != 0 and message in result.stderr


def test_the_scheduler_spreads_requests_over_two_real_replicas(make_daemon, tiny_gguf, monkeypatch):
    """The replica path of runner/daemon/scheduler.py with two real runners of the tiny model. The planner gives a
    CPU host one copy (LM_REPLICAS needs GPUs that each hold the model), so the two copies are started
    here from two CPU placements, through the scheduler's own _load; the rest is its public path."""
    import asyncio

    from registry import ModelName, Store
    from runner.settings import Settings
    from runner.daemon.placement import ModelShape, place
    from runner.model.config import load_model_config
    from runner.daemon.scheduler import Scheduler, placement_devices

    d = make_daemon()
    d.create_from_gguf("tiny", tiny_gguf)
    d.stop()
    monkeypatch.setenv("LM_MODELS", str(d.models_dir))
    monkeypatch.setenv("LM_NUM_PARALLEL", "2")
    settings = Settings.from_env()
    config = load_model_config(Store(settings.models_dir), ModelName.parse("tiny"))

    async def scenario():
        sched = Scheduler(settings)
        num_ctx = sched._num_ctx(config, {})
        shape = ModelShape.from_gguf(config.gguf)
        copies = [place(shape, num_ctx=num_ctx, kv_type="f16", num_gpu=None, parallel=2) for _ in range(2)]
        try:
            loaded = await sched._load(config, {}, copies, num_ctx, None, None)
            leases = [await sched.acquire(config, {}, None) for _ in range(4)]
            assert [loaded.replicas.index(lease.replica) for lease in leases] == [0, 1, 0, 1]  # by free slots
            assert loaded.active == 4 and [r.active for r in loaded.replicas] == [2, 2] and loaded.slots == 4
            assert len({lease.proc.pid for lease in leases}) == 2
            for lease in leases[:2]:  # each copy generates
                batches = [b async for b in lease.proc.completion_batches(
                    CompletionRequest("hi", SamplingOptions(num_predict=2)))]
                assert isinstance(batches[-1][-1], FinalRecord)
            for lease in leases:
                sched.release(lease)
            assert loaded.active == 0 and loaded.idle.is_set()
            assert placement_devices(loaded.replicas[1].placement) == []  # CPU copies: no GPU share

            # One copy dies: the model is forgotten (the next request loads it again), the other copy stops
            # once idle, and nothing is left running.
            lease = await sched.acquire(config, {}, None)
            os.kill(lease.proc.pid, signal.SIGKILL)
            sched.release(lease)
            await sched.reap_if_dead(lease, failed=True)
            assert config.key not in sched.loaded
            for _ in range(100):
                if not any(r.proc.alive for r in loaded.replicas):
                    break
                await asyncio.sleep(0.05)
            assert not any(r.proc.alive for r in loaded.replicas)
        finally:
            await sched.shutdown()

    asyncio.run(scenario())
