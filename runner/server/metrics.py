"""Observability: request ids, one structured access-log line per request, and Prometheus metrics.

`observe` (the outermost middleware) gives each request an id (the client's `X-Request-Id` when it is
sane, else a fresh one), echoes it in the response, puts it on every log record written while the
request runs (`request_id`), logs the request when it ends, and counts it for `/metrics`.

Token counts and latencies come from `observe_completion`, which the inference path calls once per
finished completion. Scheduler state (loaded models, queue depth, memory per
model) is read at scrape time by `SchedulerCollector`.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import logging
import os
import re
import secrets
import time
import weakref
from datetime import datetime, timezone

from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, PlatformCollector, ProcessCollector,
    disable_created_metrics, generate_latest,
)
from prometheus_client.core import GaugeMetricFamily

from runner.settings import TRACE

from runner import __version__

access_log = logging.getLogger("lm.access")
request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("lm_request_id", default=None)
_REQUEST_ID_OK = re.compile(r"[A-Za-z0-9._:\-]{1,64}\Z")

disable_created_metrics()  # no *_created series: they double the output and say little here
REGISTRY = CollectorRegistry(auto_describe=True)
ProcessCollector(registry=REGISTRY)  # process_resident_memory_bytes, process_open_fds, process_cpu_seconds_total
PlatformCollector(registry=REGISTRY)

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
_TOKEN_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1)

BUILD_INFO = Gauge("lm_build_info", "The running lm version", ["version"], registry=REGISTRY)
BUILD_INFO.labels(__version__).set(1)
REQUESTS = Counter("lm_http_requests", "HTTP requests answered, by route, method and status",
                   ["route", "method", "status"], registry=REGISTRY)
REQUEST_SECONDS = Histogram("lm_http_request_duration_seconds", "Time to answer a request (streams: to the end)",
                            ["route", "method"], buckets=_LATENCY_BUCKETS, registry=REGISTRY)
IN_FLIGHT = Gauge("lm_http_requests_in_flight", "Requests being answered now", registry=REGISTRY)
PROMPT_TOKENS = Counter("lm_prompt_tokens", "Prompt tokens evaluated", ["model"], registry=REGISTRY)
GENERATED_TOKENS = Counter("lm_generated_tokens", "Tokens generated", ["model"], registry=REGISTRY)
COMPLETIONS = Counter("lm_completions", "Completions finished", ["model"], registry=REGISTRY)
TTFT = Histogram("lm_time_to_first_token_seconds",
                 "From the request reaching the model (queue and load included) to its first token",
                 ["model"], buckets=_LATENCY_BUCKETS, registry=REGISTRY)
TPOT = Histogram("lm_time_per_output_token_seconds", "Mean time per generated token, one sample per completion",
                 ["model"], buckets=_TOKEN_BUCKETS, registry=REGISTRY)


DRAFT_TOKENS = Counter("lm_draft_tokens", "Speculative decoding: tokens drafted and verified", ["model"],
                       registry=REGISTRY)
DRAFT_ACCEPTED = Counter("lm_draft_accepted_tokens", "Speculative decoding: drafted tokens the model accepted",
                         ["model"], registry=REGISTRY)


def observe_drafts(model: str, drafted: int | None, accepted: int | None) -> None:
    """Counts one finished completion's draft tokens (None: the request did not speculate)."""
    if drafted is None:
        return
    try:
        DRAFT_TOKENS.labels(model).inc(max(int(drafted), 0))
        DRAFT_ACCEPTED.labels(model).inc(max(int(accepted or 0), 0))
    except Exception:  # metrics must never break an answer
        logging.getLogger("lm.metrics").debug("observe_drafts failed", exc_info=True)


def observe_completion(model: str, prompt_tokens: int, eval_tokens: int, ttft_s: float | None,
                       eval_s: float | None) -> None:
    """Counts one finished completion: tokens in and out, time to first token, time per output token."""
    try:
        PROMPT_TOKENS.labels(model).inc(max(int(prompt_tokens or 0), 0))
        GENERATED_TOKENS.labels(model).inc(max(int(eval_tokens or 0), 0))
        COMPLETIONS.labels(model).inc()
        if ttft_s is not None and ttft_s >= 0:
            TTFT.labels(model).observe(ttft_s)
        if eval_tokens and eval_s and eval_s > 0:
            TPOT.labels(model).observe(eval_s / eval_tokens)
    except Exception:  # metrics must never break an answer
        logging.getLogger("lm.metrics").debug("observe_completion failed", exc_info=True)


# ---------------------------------------------------------------- scheduler state, read at scrape time

_schedulers: "weakref.WeakSet" = weakref.WeakSet()
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def _rss(pid: int | None) -> int | None:
    if not pid:
        return None
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        return None


class SchedulerCollector:
    """lm_models_loaded, lm_queue_depth, lm_requests_active and lm_model_memory_bytes per model."""

    def collect(self):
        loaded = GaugeMetricFamily("lm_models_loaded", "Models loaded in a runner process")
        queue = GaugeMetricFamily("lm_queue_depth", "Requests waiting for a slot or a load, by model",
                                  labels=["model"])
        active = GaugeMetricFamily("lm_requests_active", "Requests being generated (in a runner slot), by model",
                                   labels=["model"])
        memory = GaugeMetricFamily("lm_model_memory_bytes",
                                   "Memory per loaded model: estimated (weights + KV cache), vram, rss (runner process)",
                                   labels=["model", "kind"])
        count = 0
        for sched in list(_schedulers):
            inflight = dict(getattr(sched, "_inflight", {}))
            for key, lm in list(sched.loaded.items()):
                count += 1
                name = lm.config.display
                # Requests past the runner's slots wait in its queue; those not yet holding it wait for a load.
                slots = max(lm.slots, 1)  # of all its replicas (LM_REPLICAS)
                active.add_metric([name], min(lm.active, slots))
                queue.add_metric([name], max(inflight.get(key, 0) - lm.active, 0) + max(lm.active - slots, 0))
                memory.add_metric([name, "estimated"], sum(r.placement.size for r in lm.replicas))
                memory.add_metric([name, "vram"], sum(r.placement.size_vram for r in lm.replicas))
                rss = [_rss(r.proc.pid if r.proc.alive else None) for r in lm.replicas]
                if any(x is not None for x in rss):
                    memory.add_metric([name, "rss"], sum(x for x in rss if x is not None))
            for key, n in inflight.items():  # waiting for a model that is not loaded (yet)
                if key not in sched.loaded and n > 0:
                    queue.add_metric([key], n)
        loaded.add_metric([], count)
        yield from (loaded, queue, active, memory)


REGISTRY.register(SchedulerCollector())


def track_scheduler(scheduler) -> None:
    _schedulers.add(scheduler)


async def metrics_handler(_request: web.Request) -> web.Response:
    body = await asyncio.to_thread(generate_latest, REGISTRY)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


# ---------------------------------------------------------------- request ids and the access log

class RequestIdFilter(logging.Filter):
    """Puts the current request's id on every record (`request_id`, None outside a request)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = request_id.get()
        return True


_STD_ATTRS = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime", "request_id"}


class TextFormatter(logging.Formatter):
    def __init__(self):
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        rid = getattr(record, "request_id", None)
        if rid:
            name = f" {record.name}:"
            text = text.replace(name, f" {record.name} [{rid}]:", 1)
        return text


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, request_id and any `extra` fields."""

    def format(self, record: logging.LogRecord) -> str:
        out = {"time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
               "level": record.levelname.lower(), "logger": record.name, "msg": record.getMessage()}
        rid = getattr(record, "request_id", None)
        if rid:
            out["request_id"] = rid
        for key, value in vars(record).items():
            if key not in _STD_ATTRS and not key.startswith("_"):
                out[key] = value if isinstance(value, (str, int, float, bool, type(None))) else str(value)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False)


def configure_logging(level: int = logging.INFO, fmt: str = "text") -> None:
    """Root logging at `level` (a `logging` level; Settings.log_level maps LM_DEBUG onto it, TRACE included)."""
    logging.addLevelName(TRACE, "TRACE")
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(RequestIdFilter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    for noisy in ("aiohttp.access", "asyncio"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _route(request: web.Request) -> str:
    """The route's pattern ("/api/blobs/{digest}"), so that labels stay few whatever the paths."""
    try:
        info = request.match_info
        if info.http_exception is not None:
            return "unmatched"
        route = info.route
        resource = route.resource
        return resource.canonical if resource is not None else "unmatched"
    except Exception:
        return "unmatched"


_in_flight = 0


def in_flight() -> int:
    """Requests being answered now."""
    return _in_flight


@web.middleware
async def observe(request: web.Request, handler):
    incoming = request.headers.get("X-Request-Id", "")
    rid = incoming if _REQUEST_ID_OK.match(incoming) else secrets.token_hex(8)
    token = request_id.set(rid)
    request["lm.request_id"] = rid
    start = time.perf_counter()
    status = 500
    global _in_flight
    _in_flight += 1
    IN_FLIGHT.inc()
    try:
        response = await handler(request)
        status = response.status
        return response
    except web.HTTPException as exc:
        status = exc.status
        raise
    except (asyncio.CancelledError, ConnectionResetError):
        status = 499  # the client went away (or the daemon is stopping)
        raise
    finally:
        _in_flight -= 1
        IN_FLIGHT.dec()
        elapsed = time.perf_counter() - start
        route, method = _route(request), request.method
        REQUESTS.labels(route, method, str(status)).inc()
        REQUEST_SECONDS.labels(route, method).observe(elapsed)
        access_log.log(logging.WARNING if status >= 500 else logging.INFO,
                       "%s %s %d %.3fs", method, request.path, status, elapsed,
                       extra={"method": method, "path": request.path, "status": status,
                              "duration_ms": round(elapsed * 1000, 2), "remote": request.remote})
        request_id.reset(token)


async def request_id_header(request: web.Request, response: web.StreamResponse) -> None:
    """on_response_prepare: the request id on every response, streams included."""
    rid = request.get("lm.request_id")
    if rid and "X-Request-Id" not in response.headers:
        response.headers["X-Request-Id"] = rid


__all__ = [
    "REGISTRY", "observe", "in_flight", "observe_completion", "metrics_handler", "track_scheduler",
    "configure_logging", "request_id", "request_id_header", "RequestIdFilter", "JsonFormatter", "TextFormatter",
]
