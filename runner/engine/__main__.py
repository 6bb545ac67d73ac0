"""Entry point of a runner process: `python -m runner.engine --model PATH --socket PATH ...`, the
arguments being a LaunchConfig's (runner/engine/protocol.py).

The model is loaded before aiohttp is imported: with aiohttp imported first, loading a model onto an
H100 through llama.cpp's CUDA backend segfaulted (seen on the device machine, reproducible).
"""

from __future__ import annotations

import os
import sys
import threading

# The daemon numbers GPUs as nvidia-smi does (PCI bus order); make CUDA agree, so that main_gpu and
# tensor_split name the same GPUs. Must be set before llama.cpp (imported below) initialises CUDA.
os.environ.setdefault("CUDA_DEVICE_ORDER", "PCI_BUS_ID")

from runner.engine.model import LoadedModel, ModelLoadError
from runner.engine.protocol import LaunchConfig, ProtocolError


def _config() -> LaunchConfig:
    """This runner's settings, from the command line the daemon wrote (LaunchConfig.to_argv)."""
    try:
        return LaunchConfig.from_argv(sys.argv[1:])
    except ProtocolError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        sys.exit(2)


def _die_with_daemon(daemon_pid: int) -> None:
    """A runner outliving its daemon would hold its memory forever. On Linux the kernel kills it the
    moment the daemon dies, however it dies and whatever the runner is doing (loading a model included:
    a signal handler of Python's would wait for llama.cpp's call to return). The serve loop's check of
    the parent is the fallback elsewhere. The daemon's next start removes the socket left behind."""
    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL))
    if daemon_pid and os.getppid() != daemon_pid:  # it died before the line above
        os._exit(0)


async def _serve(cfg: LaunchConfig, model: LoadedModel, embedder=None) -> None:
    import asyncio
    import signal

    from aiohttp import web

    from runner.engine.server import RunnerServer

    info = {"n_ctx": cfg.num_ctx, "gpu_layers": cfg.gpu_layers, "pid": os.getpid()}
    server = RunnerServer(model, cfg.parallel, mixed_prefill=cfg.mixed_prefill, info=info,
                          embedder=embedder, spec_max_sequences=cfg.spec_max_sequences,
                          profile_every=cfg.profile_every)
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.add_routes(server.routes())
    runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
    await runner.setup()
    await web.UnixSite(runner, cfg.socket).start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    parent = os.getppid()
    while not stop.is_set():
        # Where the kernel does not kill us with the daemon (see _die_with_daemon): leave when it is gone.
        if os.getppid() != parent:
            break
        try:
            await asyncio.wait_for(stop.wait(), timeout=0.25)
        except asyncio.TimeoutError:
            pass
    await runner.cleanup()
    server.stop()
    model.close()


def main() -> None:
    import asyncio

    cfg = _config()
    _die_with_daemon(cfg.daemon_pid)
    threading.stack_size(64 * 1024 * 1024)  # the engine thread runs llama.cpp's decode: give it room
    try:
        model = LoadedModel(cfg)
    except ModelLoadError as exc:
        # The daemon reports the last "error:" line of a runner that failed to start.
        print(f"error: {exc}", file=sys.stderr, flush=True)
        sys.exit(1)
    embedder = None
    if cfg.embedding_only:  # created here too, before aiohttp is imported
        from runner.engine.embed import EmbedUnsupported, new_embed_engine

        try:
            embedder = new_embed_engine(model)
        except (EmbedUnsupported, RuntimeError) as exc:
            print(f"error: {exc}", file=sys.stderr, flush=True)
            sys.exit(1)
    asyncio.run(_serve(cfg, model, embedder))


if __name__ == "__main__":
    main()
