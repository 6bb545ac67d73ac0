"""Where an engine step's time goes, when LM_ENGINE_PROFILE is set: a line on stderr every N steps
(LaunchConfig.profile_every, which the daemon fills from the setting).

Phases are measured on the engine thread with perf_counter: `admit` (new requests into slots), `build`
(planning and filling the batch), `decode` (llama_decode, including any wait to retake the GIL after
it), `gpu` (waiting for an asynchronous backend to finish the step: profiling adds this sync), `sample` (all sequences' sampler chains), `tokens` (text, stop strings, limits), `emit` (handing
the step's events to the HTTP side), and `idle` (waiting for work). Costs a few perf_counter calls per
step; off by default.
"""

from __future__ import annotations

import sys
import time

PHASES = ("idle", "admit", "build", "decode", "gpu", "sample", "tokens", "emit")


class StepProfile:
    def __init__(self, every: int):
        self.every = every
        self.totals = dict.fromkeys(PHASES, 0.0)
        self.steps = 0
        self.tokens = 0
        self.t = time.perf_counter()

    def mark(self, phase: str) -> None:
        """Ends `phase` now (it began at the previous mark)."""
        now = time.perf_counter()
        self.totals[phase] += now - self.t
        self.t = now

    def step_done(self, n_tokens: int) -> None:
        self.steps += 1
        self.tokens += n_tokens
        if self.steps >= self.every:
            wall = sum(self.totals.values())
            parts = " ".join(f"{p} {self.totals[p] / self.steps * 1e3:.2f}" for p in PHASES)
            print(f"engine profile: {self.steps} steps, {self.tokens / self.steps:.1f} seqs/step, "
                  f"{self.tokens / wall:.0f} tok/s; ms per step: {parts}", file=sys.stderr, flush=True)
            self.totals = dict.fromkeys(PHASES, 0.0)
            self.steps = self.tokens = 0
