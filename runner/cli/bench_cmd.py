"""`lm bench MODEL`: throughput and TTFT through the public API, optionally beside a peer server."""

from __future__ import annotations

import asyncio
import json

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from runner.cli.bench_load import Target, run_load, summarize, warm_up, words_for_tokens


def run_bench(base_url: str, model: str, clients: list[int], tokens: int, prompt_tokens: int, requests: int,
              compare: str | None, compare_model: str | None, as_json: bool, shared_prefix_tokens: int = 0) -> list[dict]:
    targets = [("lm", Target(base_url, model))]
    if compare:
        targets.append(("peer", Target(compare, compare_model or model)))
    console = Console(stderr=True)
    rows: list[dict] = []
    for label, target in targets:
        asyncio.run(warm_up(target))
    # The same words go to every target: the same GGUF tokenizes them alike on each side.
    prompt_words, prompt_tokens = asyncio.run(words_for_tokens(targets[0][1], prompt_tokens))
    shared_words = asyncio.run(words_for_tokens(targets[0][1], shared_prefix_tokens))[0] if shared_prefix_tokens else 0
    for c in clients:
        for label, target in targets:
            total = c * requests * tokens
            with Progress(TextColumn(f"{label} x{c}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                          console=console, transient=True) as progress:
                task = progress.add_task("tokens", total=total)
                result = asyncio.run(run_load(target, c, requests, tokens, prompt_words,
                                              on_progress=lambda n: progress.advance(task, n),
                                              shared_words=shared_words))
            rows.append({"target": label, "url": target.url, "prompt_tokens": prompt_tokens, **summarize(result)})
    if as_json:
        print(json.dumps(rows))
        return rows
    shared = f" after a shared ~{shared_prefix_tokens}-token prefix" if shared_prefix_tokens else ""
    table = Table(title=f"{model}: {tokens} tokens per request, {prompt_tokens}-token prompts{shared}, "
                        f"{requests} per client")
    for col in ("target", "clients", "tok/s", "per client tok/s", "TTFT p50 ms", "TTFT p95 ms", "prompt tokens computed",
                "errors"):
        table.add_column(col, justify="right" if col != "target" else "left")
    if compare:
        table.add_column("lm / peer", justify="right")
    for row in rows:
        ratio = ""
        if compare and row["target"] == "lm":
            peer = next(r for r in rows if r["target"] == "peer" and r["clients"] == row["clients"])
            ratio = f"{row['tok_s'] / peer['tok_s']:.2f}x" if peer["tok_s"] else "-"
        cells = [row["target"], str(row["clients"]), f"{row['tok_s']:.1f}", f"{row['per_client_tok_s']:.1f}",
                 f"{row['ttft_p50_ms']:.0f}", f"{row['ttft_p95_ms']:.0f}", str(row["prompt_eval_tokens"]),
                 str(row["errors"])]
        table.add_row(*cells, *([ratio] if compare else []))
    Console().print(table)
    return rows
