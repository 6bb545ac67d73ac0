"""Closed-loop streaming load against a daemon's public API (ours or Ollama's) or llama-server.

Each of C clients sends R requests one after another, streaming; we time the first piece of text
(TTFT) and count the tokens each server says it generated. Aggregate tok/s = all tokens / wall time.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import statistics
import time
from dataclasses import dataclass, field

import aiohttp
import orjson

WORDS = ("the quick brown fox jumps over a lazy dog while seven wizards quietly hum old songs about "
         "rivers mountains and distant cities").split()


def make_prompt(n_words: int, salt: int, shared: str = "") -> str:
    # A salt in front keeps the prefix cache from serving one request's prompt to another; `shared`, a
    # preamble every request of a run starts with (a system prompt), is what it may serve.
    words = [WORDS[(i * 7 + salt) % len(WORDS)] for i in range(n_words)]
    return shared + f"Story {salt}: " + " ".join(words)


def make_preamble(n_words: int, salt: int) -> str:
    """A shared system prompt of n_words, new for each salt (so no earlier run has it cached)."""
    return f"Notes {salt}: " + " ".join(WORDS[(i * 5 + salt) % len(WORDS)] for i in range(n_words)) + "\n" if n_words else ""


_run_nonce = itertools.count(random.randrange(1 << 20) * 1000)


@dataclass
class RunResult:
    clients: int
    wall: float
    tokens: int
    ttfts: list[float] = field(default_factory=list)
    per_client_tps: list[float] = field(default_factory=list)
    prompt_evaluated: int = 0  # prompt tokens the server computed (what its prefix cache did not serve)
    errors: list[str] = field(default_factory=list)

    @property
    def tps(self) -> float:
        return self.tokens / self.wall if self.wall else 0.0

    def ttft(self, q: float) -> float:
        if not self.ttfts:
            return float("nan")
        xs = sorted(self.ttfts)
        return xs[min(len(xs) - 1, int(q * len(xs)))]


class Target:
    """Where the load goes: kind is "ollama" (lm or Ollama: /api/generate) or "llama-server"."""

    def __init__(self, url: str, model: str | None, kind: str | None = None):
        self.url = url.rstrip("/")
        self.model = model
        self.kind = kind or ("llama-server" if self.url.endswith("/completion") else "ollama")
        if self.kind == "llama-server" and not self.url.endswith("/completion"):
            self.url += "/completion"

    async def prompt_tokens(self, session: aiohttp.ClientSession, prompt: str) -> int:
        """How many tokens the model makes of `prompt` (a one-token request reports it); lm or Ollama.

        From the answer's `context` (prompt and generated tokens), not `prompt_eval_count`: that one
        counts only the tokens evaluated, and a prefix-cache hit leaves those few."""
        body = {"model": self.model, "prompt": prompt, "stream": False, "raw": True, "options": {"num_predict": 1}}
        async with session.post(self.url + "/api/generate", json=body) as resp:
            if resp.status != 200:
                raise RuntimeError(f"{resp.status}: {await resp.text()}")
            answer = await resp.json(content_type=None)
        if answer.get("context"):
            return len(answer["context"]) - int(answer.get("eval_count") or 0)
        return int(answer["prompt_eval_count"])

    async def one(self, session: aiohttp.ClientSession, prompt: str, n: int, seed: int) -> tuple[float, int, int]:
        """(ttft seconds, tokens generated, prompt tokens computed) for one streamed request."""
        t0 = time.perf_counter()
        ttft = None
        tokens = evaluated = 0
        if self.kind == "llama-server":
            body = {"prompt": prompt, "n_predict": n, "stream": True, "seed": seed, "temperature": 0.8,
                    "cache_prompt": True}
            async with session.post(self.url, json=body) as resp:
                resp.raise_for_status()
                async for raw in resp.content:
                    line = raw.strip()
                    # Parse only what we need (the first text, the last line): on a small machine the
                    # load's own JSON work would otherwise take CPU from the server it measures.
                    if not line.startswith(b"data:") or (ttft is not None and b'"stop":true' not in line):
                        continue
                    obj = orjson.loads(line[5:])
                    if ttft is None and obj.get("content"):
                        ttft = time.perf_counter() - t0
                    if obj.get("stop"):
                        tokens = obj.get("tokens_predicted") or obj.get("timings", {}).get("predicted_n", 0)
                        evaluated = obj.get("timings", {}).get("prompt_n", 0)
        else:
            body = {"model": self.model, "prompt": prompt, "stream": True, "raw": True,
                    "options": {"num_predict": n, "seed": seed, "temperature": 0.8}}
            async with session.post(self.url + "/api/generate", json=body) as resp:
                if resp.status != 200:
                    raise RuntimeError(f"{resp.status}: {await resp.text()}")
                async for raw in resp.content:
                    if not raw.strip() or (ttft is not None and b'"done":true' not in raw and b'"error"' not in raw):
                        continue
                    obj = orjson.loads(raw)
                    if "error" in obj:
                        raise RuntimeError(obj["error"])
                    if ttft is None and obj.get("response"):
                        ttft = time.perf_counter() - t0
                    if obj.get("done"):
                        tokens = obj.get("eval_count", 0)
                        evaluated = obj.get("prompt_eval_count", 0)
        return (ttft if ttft is not None else time.perf_counter() - t0), tokens, evaluated


async def run_load(target: Target, clients: int, requests_per_client: int, n_predict: int, prompt_words: int,
                   on_progress=None, shared_words: int = 0) -> RunResult:
    result = RunResult(clients=clients, wall=0.0, tokens=0)
    shared = make_preamble(shared_words, next(_run_nonce))
    timeout = aiohttp.ClientTimeout(total=None)
    # A fresh connection per request: llama-server closes streamed responses' connections, and reusing
    # one then fails. Loopback connects cost far less than a token, for every target alike.
    async with aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(limit=0, force_close=True)) as session:

        async def client(c: int) -> None:
            tokens, t_start = 0, time.perf_counter()
            for r in range(requests_per_client):
                salt = next(_run_nonce)  # never the same prompt twice, across runs and targets
                try:
                    ttft, n, evaluated = await target.one(session, make_prompt(prompt_words, salt, shared),
                                                          n_predict, seed=salt)
                except Exception as exc:  # reported in the table, not fatal to the run
                    result.errors.append(str(exc))
                    continue
                result.ttfts.append(ttft)
                result.prompt_evaluated += evaluated
                tokens += n
                result.tokens += n
                if on_progress:
                    on_progress(n)
            result.per_client_tps.append(tokens / (time.perf_counter() - t_start))

        t0 = time.perf_counter()
        await asyncio.gather(*(client(c) for c in range(clients)))
        result.wall = time.perf_counter() - t0
    return result


async def words_for_tokens(target: Target, n_tokens: int) -> tuple[int, int]:
    """(words, tokens): how many words make_prompt needs for a prompt of about n_tokens in the target's
    tokenizer, and the tokens that many words make. Loads are set in tokens, as llama-batched-bench's
    are, because words are no measure across vocabularies: a synthetic GGUF's tokenizer splits each
    of these words into ~8 tokens, a real Llama 3's into ~1."""
    salt = next(_run_nonce)  # as many digits as the load's own salts
    timeout = aiohttp.ClientTimeout(total=None)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        base = await target.prompt_tokens(session, make_prompt(0, salt))
        sample = await target.prompt_tokens(session, make_prompt(64, salt))
        per_word = max((sample - base) / 64, 1e-9)
        words = max(0, round((n_tokens - base) / per_word))
        return words, await target.prompt_tokens(session, make_prompt(words, salt))


async def warm_up(target: Target) -> None:
    """One short request so that model loading is not timed."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None)) as session:
        await target.one(session, "Hello", 4, seed=0)


def summarize(r: RunResult) -> dict:
    return {
        "clients": r.clients, "tokens": r.tokens, "wall_s": round(r.wall, 3), "tok_s": round(r.tps, 1),
        "per_client_tok_s": round(statistics.mean(r.per_client_tps), 1) if r.per_client_tps else 0.0,
        "ttft_p50_ms": round(r.ttft(0.5) * 1000, 1), "ttft_p95_ms": round(r.ttft(0.95) * 1000, 1),
        "errors": len(r.errors), "prompt_eval_tokens": r.prompt_evaluated,
    }
