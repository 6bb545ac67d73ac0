"""Speculative decoding's mechanism on a GPU, with synthetic weights (issue 23): what a verify step of k+1
tokens costs against a one-token step, and the ceiling the mechanism reaches when every draft is right.

Synthetic weights cannot show real acceptance, so this is an experiment, not a product path: an oracle
draft source (here only) proposes the tokens a first greedy run of the same prompts produced. Acceptance is
then as high as the kernels allow (a verify row can differ in the last bits from a one-token step, and a
differing argmax ends the draft), and the figure is a ceiling, to be labelled so in docs/performance.md.

Run on the GPU machine (see scripts/gpu_bench.sh for the build and the synthetic GGUF):
  python3 scripts/spec_ceiling.py /tmp/llama3-8b.gguf --sequences 1,8,32 --k 4 --tokens 256
It prints one line per sequence count, baseline and oracle side by side, in one run.
"""

from __future__ import annotations

import argparse
import json
import threading
import time

import llama_cpp as ll

from runner.engine import batch as batch_module
from runner.engine import speculative
from runner.engine.batch import Engine, Request
from runner.engine.model import LoadedModel
from runner.engine.protocol import LaunchConfig
from runner.engine.sampling import SamplingOptions


class OracleDraft:
    """Proposes what the reference run generated after this prompt: `reference` is that run's context."""

    def __init__(self, reference: list[int]):
        self.reference = reference

    def propose(self, history, k: int) -> list[int]:
        n = len(history)
        if self.reference[:n] != list(history):  # the text left the reference: nothing to propose
            return []
        return self.reference[n:n + k]


class DecodeCounter:
    """Counts llama_decode calls (the engine's steps) by wrapping the binding the engine calls."""

    def __init__(self):
        self.calls = 0
        self._real = batch_module.ll.llama_decode

    def __call__(self, ctx, batch):
        self.calls += 1
        return self._real(ctx, batch)

    def __enter__(self):
        batch_module.ll.llama_decode = self
        return self

    def __exit__(self, *exc):
        batch_module.ll.llama_decode = self._real


def run(model: LoadedModel, prompts: list[list[int]], tokens: int, k: int,
        references: dict[int, list[int]] | None) -> dict:
    """One engine run over `prompts` at once, greedy, `tokens` each; with `references`, oracle drafts."""
    done = threading.Event()
    left = [len(prompts)]
    errors: list[str] = []

    def on_events(events):
        for e in events:
            if e.error:
                errors.append(e.error)
            if e.done:
                left[0] -= 1
                if left[0] == 0:
                    done.set()

    engine = Engine(model, len(prompts), on_events, spec_max_sequences=len(prompts))
    real_source = speculative.draft_source_for
    if references is not None:
        by_prompt = {tuple(p): references[i] for i, p in enumerate(prompts)}
    reqs = []
    for i, p in enumerate(prompts):
        opts = SamplingOptions(temperature=0.0, num_predict=tokens, seed=1, repeat_penalty=1.0,
                               draft_type="ngram" if references is not None else "", draft_num_predict=k)
        reqs.append(Request(prompt=list(p), options=opts))
    if references is not None:
        queue = {r.id: by_prompt[tuple(r.prompt)] for r in reqs}
        pending = list(reqs)

        def source(draft_type, draft_num_predict):
            # _assign asks once per admitted request, in admission order (the submission order here)
            return OracleDraft(queue[pending.pop(0).id])

        batch_module.speculative.draft_source_for = source
    try:
        engine.start()
        with DecodeCounter() as counter:
            t0 = time.perf_counter()
            for r in reqs:
                engine.submit(r)
            if not done.wait(600):
                raise RuntimeError("no answer in 600 s")
            wall = time.perf_counter() - t0
    finally:
        batch_module.speculative.draft_source_for = real_source
        engine.stop()
    if errors:
        raise RuntimeError(errors[0])
    generated = sum(r.eval_count for r in reqs)
    decode_time = max(r.t_done for r in reqs) - min(r.t_first_token for r in reqs)
    drafted = sum(r.draft_count for r in reqs)
    accepted = sum(r.draft_accepted_count for r in reqs)
    return {"tok_s": generated / decode_time if decode_time > 0 else 0.0, "wall_s": wall,
            "steps": counter.calls, "generated": generated,
            "ms_per_step": 1000 * wall / max(counter.calls, 1),
            "acceptance": accepted / drafted if drafted else None,
            "contexts": [r.context for r in reqs]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("--sequences", default="1,8,32")
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--tokens", type=int, default=256)
    ap.add_argument("--prompt-tokens", type=int, default=64)
    ap.add_argument("--ctx", type=int, default=2048)
    args = ap.parse_args()
    counts = [int(n) for n in args.sequences.split(",")]
    for n in counts:
        cfg = LaunchConfig(model=args.model, num_ctx=args.ctx, parallel=n, gpu_layers=999, split_mode="none",
                           flash_attn="on", num_batch=max(512, n * (args.k + 1)))
        model = LoadedModel(cfg)
        try:
            vocab = model.n_vocab
            prompts = [[(7919 * (i + 1) * (j + 3)) % (vocab - 1000) + 500 for j in range(args.prompt_tokens)]
                       for i in range(n)]
            base = run(model, prompts, args.tokens, args.k, None)
            refs = {i: ctx for i, ctx in enumerate(base["contexts"])}
            oracle = run(model, prompts, args.tokens, args.k, refs)
        finally:
            model.close()
        same = sum(a == b for a, b in zip(base["contexts"], oracle["contexts"]))
        line = {"sequences": n, "k": args.k,
                "base_tok_s": round(base["tok_s"], 1), "oracle_tok_s": round(oracle["tok_s"], 1),
                "speedup": round(oracle["tok_s"] / base["tok_s"], 2) if base["tok_s"] else None,
                "base_ms_per_step": round(base["ms_per_step"], 2),
                "verify_ms_per_step": round(oracle["ms_per_step"], 2),
                "acceptance": round(oracle["acceptance"], 3) if oracle["acceptance"] is not None else None,
                "same_text": f"{same}/{n}"}
        print(json.dumps(line), flush=True)
    ll.llama_backend_free()


if __name__ == "__main__":
    main()
