"""The daemon: an aiohttp application with Ollama's native API, /v1, /metrics and /openapi.json.

Middlewares, outermost first: request id + access log + metrics (metrics.observe), CORS, the Host
check, API keys, the body-size cap (security.py), then `_errors`, which turns exceptions into JSON.
"""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import signal

from aiohttp import web

from registry import Store

from runner import __version__
from runner.settings import Settings
from runner.daemon.runner_client import remove_dead_runner_dirs
from runner.daemon.scheduler import Scheduler
from runner.server import anthropic, embed, generate, models_api, openai, responses
from runner.server import metrics, openapi, security
from runner.server import registry_api, rerank, tokenize, webui
from runner.server.errors import ApiError, error_response

log = logging.getLogger("lm.server")


_NO_SPACE = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT}


@web.middleware
async def _errors(request: web.Request, handler):
    """Whatever a handler lets escape, answered in the route's dialect (runner/server/errors.py)."""
    try:
        return await handler(request)
    except ApiError as exc:
        return error_response(request, exc.status, exc.message, param=exc.param)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        message = {404: "404 page not found", 405: "405 method not allowed"}.get(exc.status, exc.reason)
        if exc.status == 413:
            message = "request body too large"
        return error_response(request, exc.status, message)
    except (ConnectionResetError, asyncio.CancelledError):
        raise
    except OSError as exc:
        if exc.errno in _NO_SPACE:  # disk full or a file size limit: say so, as a client can act on it
            log.error("storage full on %s %s: %s", request.method, request.path, exc)
            return error_response(request, 507, f"not enough storage space: {exc.strerror}")
        log.exception("unhandled error on %s %s", request.method, request.path)
        # The reason without the file name: a client is never shown the server's paths.
        message = exc.strerror if exc.filename or exc.filename2 else str(exc)
        return error_response(request, 500, message or type(exc).__name__)
    except Exception as exc:  # never a bare traceback to a client
        log.exception("unhandled error on %s %s", request.method, request.path)
        return error_response(request, 500, str(exc) or type(exc).__name__)


async def version(_request: web.Request) -> web.Response:
    return web.json_response({"version": __version__})


def make_app(settings: Settings) -> web.Application:
    middlewares = [metrics.observe, security.cors_middleware(settings), security.host_check_middleware(settings),
                   security.auth_middleware(settings), security.body_size_middleware(settings), _errors]
    app = web.Application(middlewares=middlewares, client_max_size=settings.max_body)
    app["settings"] = settings
    app["store"] = Store(settings.models_dir)
    app["scheduler"] = Scheduler(settings)
    app["openapi_spec"] = openapi.build_spec(settings)
    metrics.track_scheduler(app["scheduler"])
    webui.add_routes(app)  # "/" (the health check, or a redirect to the page for browsers) and /ui/
    app.router.add_get("/api/version", version)
    models_api.add_routes(app)
    generate.add_routes(app)
    embed.add_routes(app)
    rerank.add_routes(app)
    tokenize.add_routes(app)
    openai.add_routes(app)
    responses.add_routes(app)
    anthropic.add_routes(app)
    registry_api.add_routes(app)
    app.router.add_get("/metrics", metrics.metrics_handler)
    app.router.add_get("/openapi.json", openapi.openapi_handler)
    app.on_response_prepare.append(metrics.request_id_header)
    app.on_response_prepare.append(security.cors_headers)

    async def on_startup(app: web.Application) -> None:
        for path in await asyncio.to_thread(remove_dead_runner_dirs):
            log.info("removed the runner socket directory %s of a daemon that is gone", path)
        if not settings.noprune:
            removed = await asyncio.to_thread(app["store"].cleanup)
            for path in removed:
                log.info("removed leftover partial file %s", path)
            removed = await asyncio.to_thread(app["store"].prune_unreferenced_blobs, settings.prune_grace)
            for path in removed:
                log.info("removed unreferenced blob %s", path.name)

    async def on_cleanup(app: web.Application) -> None:
        # Runs after in-flight requests have finished or been cancelled (see serve): no runner outlives us.
        await app["scheduler"].shutdown()

    app.on_startup.append(on_startup)
    app.on_cleanup.append(on_cleanup)
    return app


def serve(settings: Settings) -> None:
    metrics.configure_logging(settings.log_level, settings.log_format)
    app = make_app(settings)

    async def main() -> None:
        runner = web.AppRunner(app, handler_cancellation=True, access_log=None,
                               # aiohttp waits forever on 0: a tiny grace means "cancel at once"
                               shutdown_timeout=max(settings.shutdown_timeout, 0.05))
        await runner.setup()
        site = web.TCPSite(runner, settings.host, settings.port)
        await site.start()
        log.info("lm %s listening on %s:%d (models in %s)", __version__, settings.host, settings.port,
                 settings.models_dir)
        if settings.auth_enabled:
            log.info("API keys required (LM_API_KEYS%s)", ", LM_API_KEYS_FILE" if settings.api_keys_file else "")
        elif not security.is_loopback_host(settings.host):
            log.warning("listening on %s with no API keys: anyone who can reach this address can run, create and "
                        "delete models. Set LM_API_KEYS (see docs/security.md)", settings.host)
        stop, force = asyncio.Event(), asyncio.Event()
        loop = asyncio.get_running_loop()

        def on_signal() -> None:
            (force if stop.is_set() else stop).set()

        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, on_signal)
        await stop.wait()
        busy = metrics.in_flight()
        log.info("shutting down: no new connections; %d request(s) in flight get up to %.0fs to finish "
                 "(signal again to stop at once)", busy, settings.shutdown_timeout)
        cleanup = asyncio.create_task(runner.cleanup())
        forced = asyncio.create_task(force.wait())
        await asyncio.wait({cleanup, forced}, return_when=asyncio.FIRST_COMPLETED)
        if not cleanup.done():
            log.warning("second signal: cancelling in-flight requests now")
            cleanup.cancel()
            try:
                await cleanup
            except BaseException:  # noqa: BLE001 - whatever it was, the requests and runners go next
                pass
            if runner.server is not None:
                await runner.server.shutdown(0.05)  # cancel every in-flight request (they release their runners)
            await app["scheduler"].shutdown()
        forced.cancel()
        log.info("stopped")

    asyncio.run(main())


__all__ = ["make_app", "serve", "json"]
