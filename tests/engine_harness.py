"""An engine (runner/engine/batch.py) in the test's own process, for tests of the step loop itself."""

from __future__ import annotations

import threading

from runner.engine.batch import Engine, Request
from runner.engine.sampling import SamplingOptions


class EngineRun:
    """An engine over a loaded model, and each request's text, logprob entries, event count and end."""

    wait_s = 300  # for one answer

    def __init__(self, model, **engine_args):
        self.model = model
        self.text: dict[int, str] = {}
        self.logprobs: dict[int, list] = {}
        self.pieces: dict[int, int] = {}
        self.reason: dict[int, str] = {}
        self.ended: dict[int, threading.Event] = {}
        self.errors: list[str] = []
        self.engine = Engine(model, 4, self.on_events, **engine_args)
        self.engine.start()

    def on_events(self, events):
        for e in events:
            if e.error:  # kept for the test thread: an assert here would die unseen in the engine thread
                self.errors.append(e.error)
            rid = e.request.id
            self.text[rid] = self.text.get(rid, "") + e.text
            self.logprobs.setdefault(rid, []).extend(e.logprobs or [])
            self.pieces[rid] = self.pieces.get(rid, 0) + 1
            if e.done:
                self.reason[rid] = e.done_reason
                self.ended[rid].set()

    def submit(self, prompt: list[int], **options) -> Request:
        req = Request(prompt=list(prompt), options=SamplingOptions(**options))
        self.ended[req.id] = threading.Event()
        self.engine.submit(req)
        return req

    def wait(self, req: Request) -> str:
        assert self.ended[req.id].wait(self.wait_s), "no answer"
        assert not self.errors, self.errors
        return self.text.get(req.id, "")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.engine.stop()
