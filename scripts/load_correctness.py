#!/usr/bin/env python3
"""Greedy outputs alone and under load, through a running daemon: do they agree, and do limits hold?

The GPU half of issue "engine at scale"'s correctness check (the CPU half, bit-equality, is in the test
suite: tests/test_engine_load.py). On a GPU, kernels differ by batch size, so texts under load need not
equal the texts alone; they must stay coherent (read the samples printed) and keep the same limits.

    python3 scripts/load_correctness.py --model smollm2:135m --clients 32 --tokens 128 [--host 127.0.0.1:11434]

On the GPU machine, with a real model (smollm2's 94 MiB GGUF is over one call's carry limit beside
.device, so it travels in two halves, in calls made back to back while the machine stays warm):
    here:   mkdir -p .device/model && split -b 48M .cache/models/SmolLM2-135M-Instruct.Q4_1.gguf .device/model/part-
    call 1, carry [".device"]:                         bash .device/device-build.sh
    call 2, carry [".device/py", ".device/model/part-aa"]: cp .device/model/part-aa /tmp/
    call 3, carry [".device/py", ".device/model/part-ab"]:
        m=/tmp/m; mkdir -p $m; cat /tmp/part-aa .device/model/part-ab > $m/SmolLM2-135M-Instruct.Q4_1.gguf
        cp modelfiles/library/smollm2-135m.Modelfile $m/
        export LD_LIBRARY_PATH=/tmp/lb/bin LLAMA_CPP_LIB_PATH=/tmp/lb/bin PYTHONPATH=$PWD/.device/py:$PWD
        export LM_MODELS=/tmp/s LM_HOST=127.0.0.1:11500 LM_NUM_PARALLEL=64 LM_NO_AUTOSTART=1
        python3 -m runner.cli serve & sleep 5; python3 -m runner.cli create smollm2:135m -f $m/smollm2-135m.Modelfile
        python3 scripts/load_correctness.py --model smollm2:135m --clients 64 --tokens 128

Each of CLIENTS prompts runs once alone, then all of them at once (streaming, `/api/generate`,
temperature 0). Prints one line per prompt (tokens alone / under load, done reasons, how much of the
text agrees from the start) and a few texts of each run side by side. Exits 1 if any stream errored,
interleaved (a piece after its `done`), or broke a length limit (more tokens than num_predict, or fewer
without a stop).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys

import aiohttp
import orjson

TOPICS = ("the sea", "a lighthouse", "bread", "winter", "a violin", "rivers", "the moon", "bees",
          "a library", "trains", "volcanoes", "tea", "owls", "glass", "deserts", "clocks")


def prompts(n: int) -> list[str]:
    return [f"Write a few sentences about {TOPICS[i % len(TOPICS)]}, take {i // len(TOPICS) + 1}."
            for i in range(n)]


async def generate(session: aiohttp.ClientSession, url: str, model: str, prompt: str, tokens: int) -> dict:
    body = {"model": model, "prompt": prompt, "stream": True,
            "options": {"temperature": 0, "seed": 0, "num_predict": tokens}}
    text, final, problems = [], None, []
    async with session.post(url, json=body) as resp:
        if resp.status != 200:
            return {"text": "", "problems": [f"HTTP {resp.status}: {await resp.text()}"]}
        async for line in resp.content:
            if not line.strip():
                continue
            obj = orjson.loads(line)
            if final is not None:
                problems.append("a piece after done")
            if "error" in obj:
                problems.append(obj["error"])
            text.append(obj.get("response", ""))
            if obj.get("done"):
                final = obj
    if final is None:
        problems.append("no done")
        final = {}
    n, reason = final.get("eval_count", 0), final.get("done_reason")
    if n > tokens or (reason != "stop" and n < tokens):
        problems.append(f"{n} tokens, done_reason {reason}, num_predict {tokens}")
    return {"text": "".join(text), "eval_count": n, "done_reason": reason, "problems": problems}


def agreed(a: str, b: str) -> int:
    return len(os.path.commonprefix([a, b]))


async def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--host", default=os.environ.get("LM_HOST", "127.0.0.1:11434"))
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--samples", type=int, default=3, help="texts to print from each run")
    a = ap.parse_args()
    url = f"http://{a.host}/api/generate"
    ps = prompts(a.clients)
    timeout = aiohttp.ClientTimeout(total=None)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        alone = [await generate(session, url, a.model, p, a.tokens) for p in ps]
        loaded = await asyncio.gather(*(generate(session, url, a.model, p, a.tokens) for p in ps))
    bad = 0
    same = 0
    for i, (x, y) in enumerate(zip(alone, loaded)):
        problems = x["problems"] + y["problems"]
        bad += bool(problems)
        same += x["text"] == y["text"]
        print(f"{i:3d} alone {x.get('eval_count')} {x.get('done_reason')} | load {y.get('eval_count')} "
              f"{y.get('done_reason')} | agree {agreed(x['text'], y['text'])}/{len(x['text'])} chars"
              + (f" | PROBLEMS {problems}" if problems else ""))
    for i in range(min(a.samples, len(ps))):
        print(f"\n--- {ps[i]}\nalone: {alone[i]['text']!r}\nload:  {loaded[i]['text']!r}")
    print(f"\n{a.clients} prompts, {a.tokens} tokens: {same} identical under load, {bad} with problems")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
