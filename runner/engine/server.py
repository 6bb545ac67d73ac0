"""The runner process: one loaded model, served over HTTP on a Unix socket to the daemon.

Routes (internal, not a public API):
  GET  /health      -> {"status": "ok", "slots", "active", "n_ctx", "gpu_layers", ...}
  POST /tokenize    {"content"} -> {"tokens"}
  POST /completion  {"prompt": str, "options": {...}} -> NDJSON: {"content"} lines, then a final
                    {"done": true, "done_reason", counts and durations (ns), "context"} or {"error"}
"""

from __future__ import annotations

import asyncio
import json

from aiohttp import web

from .batch import Engine, Event, Request
from .model import LoadedModel
from .sampling import SamplingOptions


def _ns(seconds: float) -> int:
    return int(seconds * 1e9)


class RunnerServer:
    def __init__(self, model: LoadedModel, n_slots: int, *, mixed_prefill: bool, info: dict):
        self.model = model
        self.info = info
        self.loop = asyncio.get_running_loop()
        self.queues: dict[int, asyncio.Queue] = {}
        self.engine = Engine(model, n_slots, self._on_events_threadsafe, mixed_prefill=mixed_prefill)
        self.engine.start()

    def _on_events_threadsafe(self, events: list[Event]) -> None:
        # One hop to the event loop per engine step, whatever the number of tokens in it.
        self.loop.call_soon_threadsafe(self._dispatch, events)

    def _dispatch(self, events: list[Event]) -> None:
        for ev in events:
            q = self.queues.get(ev.request.id)
            if q is not None:
                q.put_nowait(ev)

    async def health(self, _request: web.Request) -> web.Response:
        status = "error" if self.engine.fatal_error else "ok"
        return web.json_response(
            {"status": status, "error": self.engine.fatal_error, "slots": len(self.engine.slots),
             "active": self.engine.active, **self.info}
        )

    async def tokenize(self, request: web.Request) -> web.Response:
        body = await request.json()
        return web.json_response({"tokens": self.model.tokenize(body.get("content", ""))})

    async def completion(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        try:
            opts = SamplingOptions.from_options(body.get("options") or {})
            context = [int(t) for t in body.get("context") or []]
            # A continued conversation (/api/generate's `context`) already starts with BOS.
            prompt = context + self.model.tokenize(body.get("prompt", ""), add_special=not context)
        except (TypeError, ValueError) as exc:
            return web.json_response({"error": str(exc)}, status=400)
        req = Request(prompt=prompt, options=opts)
        queue: asyncio.Queue = asyncio.Queue()
        self.queues[req.id] = queue
        resp = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await resp.prepare(request)
        self.engine.submit(req)
        try:
            while True:
                ev: Event = await queue.get()
                lines = []
                while True:  # drain whatever this step produced in one write
                    if ev.error:
                        lines.append({"error": ev.error})
                    elif ev.done:
                        if ev.text:
                            lines.append({"content": ev.text})
                        lines.append(self._final(req, ev))
                    elif ev.text:
                        lines.append({"content": ev.text})
                    if ev.done or queue.empty():
                        break
                    ev = queue.get_nowait()
                await resp.write("".join(json.dumps(x) + "\n" for x in lines).encode())
                if ev.done:
                    break
        finally:
            # Reached on normal completion and when the daemon hangs up (handler cancelled).
            self.queues.pop(req.id, None)
            if not req.t_done:
                self.engine.cancel(req)
        await resp.write_eof()
        return resp

    @staticmethod
    def _final(req: Request, ev: Event) -> dict:
        return {
            "done": True,
            "done_reason": ev.done_reason,
            "prompt_eval_count": req.prompt_eval_count,
            "prompt_eval_duration": _ns(req.prompt_eval_duration),
            "eval_count": req.eval_count,
            "eval_duration": _ns(req.eval_duration),
            "context": req.context,
        }

    def routes(self) -> list:
        return [
            web.get("/health", self.health),
            web.post("/tokenize", self.tokenize),
            web.post("/completion", self.completion),
        ]
