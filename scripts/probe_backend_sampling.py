#!/usr/bin/env python3
"""Engine probe (GPU): decode tok/s with CPU sampler chains vs llama.cpp's backend sampling, and the
cost of attaching a sampler to a sequence at run time (`llama_set_sampler` forces a graph reserve).

    python scripts/probe_backend_sampling.py MODEL.gguf [--seqs 1,8,32,64] [--steps 128]

Prints one JSON line per configuration. Measures the decode loop alone (no HTTP), as the issue on
engine scale asks: what the per-step host work costs, and what moving sampling onto the GPU saves.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import llama_cpp as ll  # noqa: E402

from runner.engine.batch_buffer import BatchBuffer  # noqa: E402


def chain(seed: int):
    params = ll.llama_sampler_chain_default_params()
    c = ll.llama_sampler_chain_init(params)
    ll.llama_sampler_chain_add(c, ll.llama_sampler_init_top_k(40))
    ll.llama_sampler_chain_add(c, ll.llama_sampler_init_temp(0.8))
    ll.llama_sampler_chain_add(c, ll.llama_sampler_init_dist(seed))
    return c


def make_ctx(model, n_seq: int, backend: bool, chains):
    cp = ll.llama_context_default_params()
    cp.n_ctx = n_seq * 512
    cp.n_batch = cp.n_ubatch = 512
    cp.n_seq_max = n_seq
    cp.kv_unified = True
    cp.no_perf = True
    configs = None
    if backend:
        configs = (ll.llama_sampler_seq_config * n_seq)()
        for i, c in enumerate(chains):
            configs[i].seq_id = i
            configs[i].sampler = ctypes.cast(c, ctypes.c_void_p).value
        cp.samplers = configs
        cp.n_samplers = n_seq
    ctx = ll.llama_init_from_model(model, cp)
    return ctx, configs


def run(model, n_seq: int, steps: int, mode: str) -> dict:
    chains = [chain(1000 + i) for i in range(n_seq)]
    ctx, _keep = make_ctx(model, n_seq, mode == "backend", chains)
    buf = BatchBuffer(512)
    # A short prompt per sequence, prefilled together.
    buf.clear()
    for s in range(n_seq):
        buf.add([1, 100 + s, 200, 300], 0, s, True)
    assert ll.llama_decode(ctx, buf.as_llama_batch()) == 0
    pool = ThreadPoolExecutor(8) if mode == "cpu-threads" else None
    outs = [(s, 4 * s + 3) for s in range(n_seq)]
    pos = 4
    t0 = time.perf_counter()
    for _ in range(steps):
        if pool and n_seq >= 8:
            ll.llama_get_logits_ith(ctx, outs[0][1])
            n = 8
            groups = [outs[i::n] for i in range(n)]
            res = list(pool.map(lambda g: [ll.llama_sampler_sample(chains[s], ctx, i) for s, i in g], groups))
            toks = [0] * n_seq
            for i, r in enumerate(res):
                toks[i::n] = r
        else:
            toks = [ll.llama_sampler_sample(chains[s], ctx, i) for s, i in outs]
        buf.clear()
        outs = [(s, buf.add((toks[s],), pos, s, True)) for s in range(n_seq)]
        assert ll.llama_decode(ctx, buf.as_llama_batch()) == 0
        pos += 1
    ll.llama_synchronize(ctx)
    dt = time.perf_counter() - t0
    result = {"mode": mode, "seqs": n_seq, "steps": steps, "tok_s": round(n_seq * steps / dt, 1),
              "ms_per_step": round(1000 * dt / steps, 2)}
    if mode == "backend":
        # Attaching a new chain to one sequence at run time, as a per-request chain would need.
        fresh = chain(7)
        t1 = time.perf_counter()
        ll.llama_set_sampler(ctx, 0, fresh)
        toks = [ll.llama_sampler_sample(chains[s] if s else fresh, ctx, i) for s, i in outs]
        buf.clear()
        outs = [(s, buf.add((toks[s],), pos, s, True)) for s in range(n_seq)]
        assert ll.llama_decode(ctx, buf.as_llama_batch()) == 0
        ll.llama_synchronize(ctx)
        result["set_sampler_step_ms"] = round(1000 * (time.perf_counter() - t1), 2)
    ll.llama_free(ctx)
    return result


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("model")
    p.add_argument("--seqs", default="1,8,32,64")
    p.add_argument("--steps", type=int, default=128)
    args = p.parse_args()
    ll.llama_backend_init()
    mp = ll.llama_model_default_params()
    mp.n_gpu_layers = 999
    model = ll.llama_model_load_from_file(args.model.encode(), mp)
    for n in (int(x) for x in args.seqs.split(",")):
        for mode in ("cpu", "cpu-threads", "backend"):
            print(json.dumps(run(model, n, args.steps, mode)), flush=True)


if __name__ == "__main__":
    main()
