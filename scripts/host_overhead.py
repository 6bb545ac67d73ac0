#!/usr/bin/env python3
"""CPU proxy for issue "engine at scale": how much of the engine loop's own rate reaches streaming clients.

A tiny random-weight GGUF makes llama.cpp's kernels nearly free, so what is left is host work per token.
Three layers are measured side by side in one run, for each slot/client count:

  engine  runner.engine.batch.Engine in this process, no HTTP: the decode loop with sampling and text
  runner  the runner process alone (python -m runner.engine), its /completion streamed over the Unix socket
  served  the real daemon (`lm serve`) with LM_NUM_PARALLEL=N, driven through /api/generate like `lm bench`

    .venv/bin/python scripts/host_overhead.py --clients 32,64 --tokens 128 --requests 2 [--layers engine,served]

On a GPU machine, the runner and served layers on a real-shaped model (all layers offloaded, prefill
mixed into decode steps as the daemon does on a GPU). The in-process engine layer is CPU-only: loading
onto CUDA in this process crashed on the H100 (as importing aiohttp before a CUDA load does, see
runner/engine/model.py); LM_ENGINE_PROFILE shows the runner's own engine loop instead:

    python3 scripts/host_overhead.py --model /tmp/llama3-8b.gguf --gpu --clients 32,64 --prompt-words 64

Numbers are noisy on a shared machine: compare the ratios within one run, and repeat.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.gguf_factory import write_tiny_gguf  # noqa: E402
from runner.settings import setting  # noqa: E402

# runner.cli.bench_load (and so aiohttp) is imported only after a model is loaded: importing aiohttp before
# loading onto CUDA crashed llama.cpp's CUDA init (see runner/engine/model.py).

CTX = 512  # per sequence: prompt (~200 tokens) + generated tokens fit with room to spare
# llama.cpp's CPU threads spin at barriers: on a 2-core machine shared with other work, two of them stall
# for 100s of ms whenever one is descheduled. One kernel thread keeps the "kernels nearly free" premise
# and leaves the other core to the host work that is being measured (the GPU's case: kernels elsewhere).
THREADS = 1
GPU = False  # --gpu: every layer on the GPU, mixed prefill
RUNNER_THREADS = 0  # --runner-threads: llama.cpp's CPU threads in the runner on a GPU (0: every core)


def tiny_model(directory: Path, n_embd: int) -> Path:
    return write_tiny_gguf(directory / f"proxy-{n_embd}.gguf", n_embd=n_embd, n_head=4, n_head_kv=4,
                           n_ff=2 * n_embd, n_layer=2, context_length=CTX)


TEMPERATURE = 0.8  # --temperature; 0 is greedy (no sampler chain work beyond the argmax)


def options(seed: int, tokens: int) -> dict:
    return {"num_predict": tokens, "seed": seed, "temperature": TEMPERATURE}


# -- engine: the loop alone ---------------------------------------------------------------------
def engine_rate(gguf: Path, slots: int, tokens: int, requests: int, prompt_words: int) -> dict:
    """Closed loop as the bench clients do it: each of `slots` clients resubmits when its request ends."""
    from runner.engine.batch import Engine, Request
    from runner.engine.model import LoadedModel
    from runner.engine.protocol import LaunchConfig
    from runner.engine.sampling import SamplingOptions

    model = LoadedModel(LaunchConfig(model=str(gguf), num_ctx=CTX, parallel=slots, num_batch=512, num_thread=THREADS))
    from runner.cli.bench_load import make_prompt
    done = threading.Event()
    left = {"requests": slots * requests, "tokens": 0}
    salt = iter(range(10**9))
    engine: Engine

    def submit() -> None:
        s = next(salt)
        prompt = model.tokenize(make_prompt(prompt_words, s))
        engine.submit(Request(prompt=prompt, options=SamplingOptions.from_options(options(s, tokens))))

    def on_events(events) -> None:
        for ev in events:
            if ev.done:
                left["tokens"] += ev.request.eval_count
                left["requests"] -= 1
                if left["requests"] <= 0:
                    done.set()
                elif left["requests"] >= slots:
                    submit()

    engine = Engine(model, slots, on_events, profile_every=setting("ENGINE_PROFILE"))  # as the daemon hands it on
    engine.start()
    t0 = time.perf_counter()
    for _ in range(slots):
        submit()
    done.wait()
    wall = time.perf_counter() - t0
    engine.stop()
    model.close()
    return {"tokens": left["tokens"], "wall_s": wall, "tok_s": left["tokens"] / wall}


# -- runner: the runner process over its socket -------------------------------------------------
async def runner_rate(gguf: Path, slots: int, tokens: int, requests: int, prompt_words: int) -> dict:
    import aiohttp

    from runner.cli.bench_load import make_prompt

    sock = os.path.join(tempfile.mkdtemp(prefix="lm-proxy-"), "runner.sock")
    from runner.engine.protocol import CompletionRequest, LaunchConfig, SamplingOptions

    where = dict(gpu_layers=999, mixed_prefill=True, num_thread=RUNNER_THREADS) if GPU else dict(num_thread=THREADS)
    launch = LaunchConfig(model=str(gguf), socket=sock, num_ctx=CTX, parallel=slots,
                          profile_every=setting("ENGINE_PROFILE"), **where)
    proc = subprocess.Popen([sys.executable, "-m", "runner.engine", *launch.to_argv()], cwd=REPO,
                            # LM_ENGINE_PROFILE's lines (runner/engine/step_profile.py) are on the runner's stderr
                            stderr=None if os.environ.get("LM_ENGINE_PROFILE") else subprocess.DEVNULL)
    try:
        conn = aiohttp.UnixConnector(path=sock, limit=0)
        async with aiohttp.ClientSession(connector=conn, timeout=aiohttp.ClientTimeout(total=None)) as session:
            while True:
                try:
                    async with session.get("http://runner/health") as resp:
                        if (await resp.json()).get("status") == "ok":
                            break
                except (aiohttp.ClientError, OSError):
                    await asyncio.sleep(0.05)
            total = 0
            salt = iter(range(10**9))

            async def client() -> None:
                nonlocal total
                for _ in range(requests):
                    s = next(salt)
                    body = CompletionRequest(make_prompt(prompt_words, s), SamplingOptions(**options(s, tokens)))
                    async with session.post("http://runner/completion", data=body.to_json()) as resp:
                        async for line in resp.content:
                            if b'"done"' in line:
                                total += json.loads(line)["eval_count"]

            meter = CpuMeter({"runner": proc.pid})
            t0 = time.perf_counter()
            await asyncio.gather(*(client() for _ in range(slots)))
            wall = time.perf_counter() - t0
        return {"tokens": total, "wall_s": wall, "tok_s": total / wall, **meter.per_token(total)}
    finally:
        proc.terminate()
        proc.wait()


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of one process so far (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


class CpuMeter:
    """CPU µs per generated token spent in each named process (and in this one, the load's client)."""

    def __init__(self, pids: dict[str, int]):
        self.pids = pids
        self.start = {name: cpu_seconds(pid) for name, pid in pids.items()}
        self.client0 = time.process_time()

    def per_token(self, tokens: int) -> dict:
        out = {f"{name}_us": (cpu_seconds(pid) - self.start[name]) / tokens * 1e6 for name, pid in self.pids.items()}
        out["client_us"] = (time.process_time() - self.client0) / tokens * 1e6
        return out


# -- served: the daemon through its public API --------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Daemon:
    def __init__(self, slots: int, workdir: Path):
        self.url = f"http://127.0.0.1:{free_port()}"
        env = {**os.environ, "LM_HOST": self.url.removeprefix("http://"), "LM_MODELS": str(workdir / f"models-{slots}"),
               "LM_NO_AUTOSTART": "1", "LM_NUM_PARALLEL": str(slots), "LM_CONTEXT_LENGTH": str(CTX),
               "LM_KEEP_ALIVE": "-1"}
        self.proc = subprocess.Popen([sys.executable, "-m", "runner.cli", "serve"], cwd=REPO, env=env,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(600):
            try:
                urllib.request.urlopen(self.url + "/api/version", timeout=1).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("daemon did not start")

    def post(self, path: str, body: dict) -> dict:
        req = urllib.request.Request(self.url + path, json.dumps(body).encode(), {"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=120) as resp:
            return json.loads(resp.read().splitlines()[-1])

    def create(self, name: str, gguf: Path) -> None:
        import hashlib

        data = gguf.read_bytes()
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        urllib.request.urlopen(urllib.request.Request(self.url + f"/api/blobs/{digest}", data, method="POST")).close()
        self.post("/api/create", {"model": name, "files": {gguf.name: digest}, "stream": False,
                                  "parameters": {} if GPU else {"num_thread": THREADS}})

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait()


async def served_rate(daemon: "Daemon", slots: int, tokens: int, requests: int, prompt_words: int) -> dict:
    from runner.cli.bench_load import Target, run_load

    (runner_pid,) = children(daemon.proc.pid)
    meter = CpuMeter({"daemon": daemon.proc.pid, "runner": runner_pid})
    result = await run_load(Target(daemon.url, "proxy"), slots, requests, tokens, prompt_words)
    if result.errors:
        raise RuntimeError(result.errors[0])
    return {"tokens": result.tokens, "wall_s": result.wall, "tok_s": result.tps,
            "ttft_p50_ms": result.ttft(0.5) * 1000, **meter.per_token(result.tokens)}


def main() -> None:
    global GPU, CTX, TEMPERATURE, RUNNER_THREADS
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clients", default="32,64")
    p.add_argument("--tokens", type=int, default=128)
    p.add_argument("--requests", type=int, default=2)
    p.add_argument("--prompt-words", type=int, default=8)  # short prompts: decode, not prefill, dominates
    p.add_argument("--n-embd", type=int, default=64)
    p.add_argument("--layers", help="default: engine,runner,served (with --gpu: runner,served)")
    p.add_argument("--repeat", type=int, default=1)
    p.add_argument("--model", help="a GGUF to serve instead of the tiny proxy")
    p.add_argument("--gpu", action="store_true", help="offload every layer; mix prefill into decode steps")
    p.add_argument("--temperature", type=float, default=TEMPERATURE)
    p.add_argument("--runner-threads", type=int, default=0)
    args = p.parse_args()
    RUNNER_THREADS = args.runner_threads
    GPU, TEMPERATURE = args.gpu, args.temperature
    if GPU:
        CTX = 2048  # prompts of real length, and the daemon's default slot size is larger still
    layers = (args.layers or ("runner,served" if GPU else "engine,runner,served")).split(",")
    if GPU and "engine" in layers:
        p.error("the engine layer runs on the CPU only (see above); with --gpu use --layers runner,served")
    work = Path(tempfile.mkdtemp(prefix="lm-host-overhead-"))
    gguf = Path(args.model) if args.model else tiny_model(work, args.n_embd)
    rows = []
    for slots in [int(c) for c in args.clients.split(",")]:
        daemon = None
        if "served" in layers:
            daemon = Daemon(slots, work)
            daemon.create("proxy", gguf)
            daemon.post("/api/generate", {"model": "proxy", "prompt": "warm", "stream": False,
                                          "options": {"num_predict": 4}})
        try:
            for rep in range(args.repeat):
                row = {"slots": slots, "rep": rep}
                for layer in layers:
                    if layer == "engine":
                        r = engine_rate(gguf, slots, args.tokens, args.requests, args.prompt_words)
                    elif layer == "runner":
                        r = asyncio.run(runner_rate(gguf, slots, args.tokens, args.requests, args.prompt_words))
                    else:
                        r = asyncio.run(served_rate(daemon, slots, args.tokens, args.requests, args.prompt_words))
                    row[layer] = r
                rows.append(row)
                cells = [f"{layer} {row[layer]['tok_s']:7.0f} tok/s ({row[layer]['tokens']} tok)" for layer in layers]
                if "engine" in layers:
                    cells += [f"{layer}/engine {row[layer]['tok_s'] / row['engine']['tok_s']:.2f}"
                              for layer in layers if layer != "engine"]
                if "served" in layers:
                    cells.append(f"served TTFT p50 {row['served']['ttft_p50_ms']:.0f} ms")
                print(f"slots {slots:3d} rep {rep}: " + " | ".join(cells), flush=True)
                for layer in ("runner", "served"):
                    if layer in row:
                        cpu = {k: round(v, 1) for k, v in row[layer].items() if k.endswith("_us")}
                        print(f"    {layer} CPU µs per token: {cpu}", flush=True)
        finally:
            if daemon:
                daemon.stop()


if __name__ == "__main__":
    main()
