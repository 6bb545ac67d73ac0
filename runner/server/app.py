"""The daemon: an aiohttp application with Ollama's native API (and room for /v1 and /metrics)."""

from __future__ import annotations

import asyncio
import json
import logging
import signal

from aiohttp import web

from registry import Store

from .. import __version__
from ..config import Settings
from ..scheduler import Scheduler
from . import anthropic, generate, models_api, openai, registry_api, responses
from .http import ApiError, dumps

log = logging.getLogger("lm.server")


@web.middleware
async def _errors(request: web.Request, handler):
    try:
        return await handler(request)
    except ApiError as exc:
        return web.Response(status=exc.status, body=dumps({"error": exc.message}), content_type="application/json")
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        message = {404: "404 page not found", 405: "405 method not allowed"}.get(exc.status, exc.reason)
        if exc.status == 413:
            message = "request body too large"
        return web.Response(status=exc.status, body=dumps({"error": message}), content_type="application/json")
    except (ConnectionResetError, asyncio.CancelledError):
        raise
    except Exception as exc:  # never a bare traceback to a client
        log.exception("unhandled error on %s %s", request.method, request.path)
        return web.Response(status=500, body=dumps({"error": str(exc) or type(exc).__name__}),
                            content_type="application/json")


async def root(_request: web.Request) -> web.Response:
    return web.Response(text="lm is running")


async def version(_request: web.Request) -> web.Response:
    return web.json_response({"version": __version__})


def make_app(settings: Settings) -> web.Application:
    app = web.Application(middlewares=[_errors], client_max_size=32 * 1024 * 1024)
    app["settings"] = settings
    app["store"] = Store(settings.models_dir)
    app["scheduler"] = Scheduler(settings)
    app.router.add_get("/", root)
    app.router.add_get("/api/version", version)
    models_api.add_routes(app)
    generate.add_routes(app)
    openai.add_routes(app)
    responses.add_routes(app)
    anthropic.add_routes(app)
    registry_api.add_routes(app)

    async def on_startup(app: web.Application) -> None:
        if not settings.noprune:
            removed = await asyncio.to_thread(app["store"].cleanup)
            for path in removed:
                log.info("removed leftover partial file %s", path)

    async def on_shutdown(app: web.Application) -> None:
        await app["scheduler"].shutdown()

    app.on_startup.append(on_startup)
    app.on_shutdown.append(on_shutdown)
    return app


def serve(settings: Settings) -> None:
    logging.basicConfig(level=logging.DEBUG if settings.debug else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    app = make_app(settings)

    async def main() -> None:
        runner = web.AppRunner(app, handler_cancellation=True, access_log=log if settings.debug else None)
        await runner.setup()
        site = web.TCPSite(runner, settings.host, settings.port)
        await site.start()
        log.info("lm %s listening on %s:%d (models in %s)", __version__, settings.host, settings.port,
                 settings.models_dir)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        log.info("shutting down")
        await runner.cleanup()

    asyncio.run(main())


__all__ = ["make_app", "serve", "json"]
