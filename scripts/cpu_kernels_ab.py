"""Prefill and decode speed of two llama.cpp CPU builds on the same GGUFs, side by side in one run.

    python scripts/cpu_kernels_ab.py --build A=/path/to/lib --build B=/path/to/lib MODEL.gguf [...]

Each figure comes from a child process that loads its build through LLAMA_CPP_LIB_PATH (the folder
holding libllama.so) and the model through the runner's own LoadedModel, as the engine loads it on the
CPU (no repacked weights). Rounds alternate between the builds, so the shared machine's drift falls on
both. What it measures, per round: one prompt of --prompt tokens prefilled in one decode, then
--steps decode steps of 1 sequence and of 4 sequences. Used for issue 25's GGML_LLAMAFILE=OFF build.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

CHILD = r"""
import json, sys, time
import llama_cpp as ll
from runner.engine.model import LoadedModel
from runner.engine.protocol import LaunchConfig

path, n_prompt, steps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
model = LoadedModel(LaunchConfig(model=path, socket='', num_ctx=n_prompt + 2 * steps + 8, parallel=4,
                                 num_batch=n_prompt, repack=False))

def decode(items):
    batch = ll.llama_batch_init(len(items), 0, 4)
    for i, (token, pos, seq) in enumerate(items):
        batch.token[i], batch.pos[i], batch.n_seq_id[i], batch.logits[i] = token, pos, 1, int(i == len(items) - 1)
        batch.seq_id[i][0] = seq
    batch.n_tokens = len(items)
    t = time.perf_counter(); assert ll.llama_decode(model.ctx, batch) == 0; dt = time.perf_counter() - t
    ll.llama_batch_free(batch)
    return dt

out = {}
for seq in range(4):  # 4 prompts; the first is the prefill figure (the others warm nothing of it)
    dt = decode([(1 + (7 * i + seq) % 500, i, seq) for i in range(n_prompt)])
    out.setdefault("prefill", n_prompt / dt)
pos = [n_prompt] * 4  # each sequence's next position
for n_seq in (1, 4):
    total = 0.0
    for s in range(steps):
        total += decode([(13 + s, pos[seq], seq) for seq in range(n_seq)])
        pos[:n_seq] = [p + 1 for p in pos[:n_seq]]
    out[f"decode{n_seq}"] = n_seq * steps / total
model.close()
print(json.dumps(out))
"""


def run_child(lib: str, model: str, prompt: int, steps: int) -> dict:
    env = dict(os.environ, LLAMA_CPP_LIB_PATH=lib, LD_LIBRARY_PATH=lib)
    done = subprocess.run([sys.executable, "-c", CHILD, model, str(prompt), str(steps)], env=env,
                          capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="+")
    ap.add_argument("--build", action="append", required=True, help="NAME=folder with libllama.so")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--prompt", type=int, default=128)
    ap.add_argument("--steps", type=int, default=24)
    args = ap.parse_args()
    builds = [b.split("=", 1) for b in args.build]
    print(f"# {time.strftime('%Y-%m-%d %H:%M')}, load average {os.getloadavg()[0]:.1f}; tok/s per round")
    print("| model | build | prefill | decode, 1 sequence | decode, 4 sequences |")
    print("|---|---|---|---|---|")
    for model in args.models:
        rows = {name: [] for name, _ in builds}
        for _ in range(args.rounds):
            for name, lib in builds:
                rows[name].append(run_child(lib, model, args.prompt, args.steps))
        for name, runs in rows.items():
            cells = [", ".join(f"{r[k]:.1f}" for r in runs) for k in ("prefill", "decode1", "decode4")]
            print(f"| {os.path.basename(model)} | {name} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
