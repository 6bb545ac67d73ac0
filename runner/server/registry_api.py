"""/api/pull and /api/push: models to and from OCI registries (and Hugging Face), with Ollama's
progress stream: `{"status", "digest", "total", "completed"}` lines, the last `{"status": "success"}`,
an `{"error"}` line if it fails once streaming has begun; with `"stream": false`, one JSON object (the
last progress) or the error.

`hf.co/<user>/<repo>[:quant]` names are pulled from Hugging Face (registry/hf.py) and the model is
created from the GGUF as /api/create does. Downloads are shared daemon-wide (`app["transfers"]`):
two pulls of one blob share one download, and `LM_MAX_TRANSFER_STREAMS` bounds parallel requests.
"""

from __future__ import annotations

import asyncio
import logging

from aiohttp import web

from registry import InvalidName, ModelName, StoreError
from registry.hf import HFError, is_hf_name, pull_gguf
from registry.oci import CredentialSource, RegistryError
from registry.pull import PullError, Transfers, pull_model
from registry.push import push_model

from runner import __version__
from runner.model.create import CreateError, create_model, parse_create_request
from runner.server.http import ApiError, NDJSONStream, bad_request, field, read_json

log = logging.getLogger("lm.server.registry")


def _transfers(app: web.Application) -> Transfers:
    return app["transfers"]


async def _parse(request: web.Request) -> tuple[ModelName, bool, bool]:
    body = await read_json(request)
    text = body.get("model") or body.get("name")
    if not isinstance(text, str) or not text.strip():
        raise bad_request("model is required")
    insecure = field(body, "insecure", bool, False)
    stream = field(body, "stream", bool, True)
    text = text.strip()
    if text.lower().startswith("http://") and not insecure:
        raise bad_request("insecure protocol http")
    try:
        name = ModelName.parse(text)
    except InvalidName as exc:
        raise bad_request(str(exc)) from None
    return name, insecure, stream


def _error_status(exc: BaseException) -> int:
    if isinstance(exc, HFError):
        return exc.status
    if isinstance(exc, CreateError):
        return 400
    return 500


async def _respond(request: web.Request, job, queue: asyncio.Queue, stream: bool) -> web.StreamResponse:
    """Runs ``job`` (a coroutine that reports into ``queue``) and answers as Ollama does."""
    task = asyncio.create_task(job)
    try:
        if not stream:
            try:
                await task
            except (PullError, RegistryError, HFError, CreateError, StoreError, OSError) as exc:
                raise ApiError(_error_status(exc), str(exc)) from None
            latest = {}
            while not queue.empty():
                latest = queue.get_nowait()
            return web.json_response(latest)

        out = NDJSONStream(request)
        while True:
            getter = asyncio.ensure_future(queue.get())
            done, _ = await asyncio.wait({getter, task}, return_when=asyncio.FIRST_COMPLETED)
            if getter not in done:
                getter.cancel()
                break
            batch = [getter.result()]
            while not queue.empty():
                batch.append(queue.get_nowait())
            await out.send(*batch)
        rest = []
        while not queue.empty():
            rest.append(queue.get_nowait())
        if rest:
            await out.send(*rest)
        exc = task.exception()
        if exc is not None:
            if not isinstance(exc, (PullError, RegistryError, HFError, CreateError, StoreError, OSError)):
                log.error("%s failed", request.path, exc_info=exc)
            if not out.started:
                raise ApiError(_error_status(exc), str(exc) or type(exc).__name__)
            await out.send({"error": str(exc) or type(exc).__name__})
        return await out.finish()
    finally:
        if not task.done():
            task.cancel()  # the client went away
            await asyncio.gather(task, return_exceptions=True)


async def _pull_hf(app: web.Application, name: ModelName, progress) -> None:
    store = app["store"]
    filename, digest = await pull_gguf(store, name, progress, _transfers(app))
    req = parse_create_request({"model": str(name), "files": {filename: digest}})
    loop = asyncio.get_running_loop()

    def created(status: str) -> None:
        if status in ("writing manifest", "success"):
            loop.call_soon_threadsafe(progress, {"status": status})

    await asyncio.to_thread(create_model, store, req, created)


async def pull(request: web.Request) -> web.StreamResponse:
    name, insecure, stream = await _parse(request)
    app = request.app
    queue: asyncio.Queue = asyncio.Queue()
    if is_hf_name(name):
        job = _pull_hf(app, name, queue.put_nowait)
    else:
        job = pull_model(app["store"], name, queue.put_nowait, insecure=insecure, transfers=_transfers(app),
                         noprune=app["settings"].noprune)
    return await _respond(request, job, queue, stream)


async def push(request: web.Request) -> web.StreamResponse:
    name, insecure, stream = await _parse(request)
    app = request.app
    queue: asyncio.Queue = asyncio.Queue()
    job = push_model(app["store"], name, queue.put_nowait, insecure=insecure, transfers=_transfers(app))
    return await _respond(request, job, queue, stream)


def add_routes(app: web.Application) -> None:
    settings = app["settings"]
    app["transfers"] = Transfers(streams=settings.max_transfer_streams, user_agent=f"lm/{__version__}",
                                 credentials=CredentialSource(settings.registry_auth, settings.registry_config))

    async def close_transfers(app: web.Application) -> None:
        await app["transfers"].close()

    app.on_cleanup.append(close_transfers)
    app.router.add_post("/api/pull", pull)
    app.router.add_post("/api/push", push)
