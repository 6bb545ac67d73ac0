"""`lm bench` against the test daemon with the tiny model, beside a second daemon as the peer: it runs,
and prints its table (no timing assertions: speed is for scripts/host_overhead.py and people)."""

from __future__ import annotations

import asyncio
import json

import aiohttp

from runner.cli.bench_load import Target, make_prompt


def test_bench_prints_table_with_a_peer(make_daemon, tiny_gguf):
    ours, peer = make_daemon({"LM_NUM_PARALLEL": "2"}), make_daemon({"LM_NUM_PARALLEL": "2"})
    ours.create_from_gguf("tiny", tiny_gguf)
    peer.create_from_gguf("tiny-peer", tiny_gguf)
    ours.env["COLUMNS"] = "200"  # rich's table width when stdout is not a terminal
    result = ours.cli("bench", "tiny", "--clients", "1,2", "--tokens", "8", "--prompt-tokens", "8", "--requests", "1",
                      "--compare", peer.url, "--compare-model", "tiny-peer")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    for header in ("target", "clients", "tok/s", "TTFT p50 ms", "TTFT p95 ms", "lm / peer"):
        assert header in out, out
    rows = [line for line in out.splitlines() if line.strip("│ ").startswith(("lm", "peer"))]
    assert len(rows) == 4, out  # lm and peer, at 1 and 2 clients


def test_bench_json(daemon, tiny):
    result = daemon.cli("bench", tiny, "--clients", "2", "--tokens", "4", "--requests", "2", "--prompt-tokens", "40",
                        "--json")
    assert result.returncode == 0, result.stderr
    (row,) = json.loads(result.stdout)
    assert row["target"] == "lm" and row["clients"] == 2 and row["errors"] == 0
    # Prompts are sized in the model's own tokens (calibrated by whole words, so within a word of it).
    assert 30 <= row["prompt_tokens"] <= 50, row
    assert row["tokens"] > 0 and row["tok_s"] > 0 and row["ttft_p50_ms"] > 0


def test_prompt_tokens_count_cached_prompts_too(daemon, tiny):
    # A prompt long enough for the prefix cache to keep whole prefill chunks of it: asked again, it is
    # mostly a cache hit, and its length must still be the whole prompt's (prompt_eval_count is not).
    prompt = make_prompt(400, 12345)

    async def count_twice() -> list[int]:
        async with aiohttp.ClientSession() as session:
            target = Target(daemon.url, tiny)
            return [await target.prompt_tokens(session, prompt) for _ in range(2)]

    first, second = asyncio.run(count_twice())
    assert first == second > 1024, (first, second)
    status, body = daemon.post("/api/generate", {"model": tiny, "prompt": prompt, "raw": True, "stream": False,
                                                 "options": {"num_predict": 1}})
    assert status == 200 and body["prompt_eval_count"] < first  # the cache hit this test is about


def test_a_shared_prefix_is_computed_once_and_the_bench_shows_it(daemon, tiny):
    # Four requests (2 clients x 2) after one ~1,200-token system prompt: the prefix is computed by the
    # first and copied to or kept for the others (issue 22), so the prompt tokens computed in all stay
    # well under four whole prompts.
    result = daemon.cli("bench", tiny, "--clients", "2", "--tokens", "4", "--requests", "2", "--prompt-tokens", "40",
                        "--shared-prefix-tokens", "1200", "--json")
    assert result.returncode == 0, result.stderr
    (row,) = json.loads(result.stdout)
    assert row["errors"] == 0
    whole = 1200 + row["prompt_tokens"]
    assert 0 < row["prompt_eval_tokens"] < 2 * whole, row
    bad = daemon.cli("bench", tiny, "--shared-prefix-tokens", "-1")
    assert bad.returncode != 0 and "must not be negative" in bad.stderr + bad.stdout
