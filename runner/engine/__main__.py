"""Entry point of a runner process: `python -m runner.engine --model PATH --socket PATH ...`.

The model is loaded before aiohttp is imported: with aiohttp imported first, loading a model onto an
H100 through llama.cpp's CUDA backend segfaulted (seen on the device machine, reproducible).
"""

from __future__ import annotations

import argparse
import os
import sys
import threading

# The daemon numbers GPUs as nvidia-smi does (PCI bus order); make CUDA agree, so that main_gpu and
# tensor_split name the same GPUs. Must be set before llama.cpp (imported below) initialises CUDA.
os.environ.setdefault("CUDA_DEVICE_ORDER", "PCI_BUS_ID")

from runner.engine.model import ContextConfig, LoadedModel, ModelLoadError


def _args() -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="runner.engine")
    p.add_argument("--model", required=True)
    p.add_argument("--socket", required=True)
    p.add_argument("--ctx", type=int, default=2048, help="context length per sequence")
    p.add_argument("--parallel", type=int, default=4)
    p.add_argument("--batch", type=int, default=512)
    p.add_argument("--gpu-layers", type=int, default=0)
    p.add_argument("--main-gpu", type=int, default=0)
    p.add_argument("--split-mode", default="layer", choices=("none", "layer", "row"))
    p.add_argument("--tensor-split", default="", help="comma-separated share of the layers per GPU, e.g. 0.6,0.4")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--flash-attn", default="auto")
    p.add_argument("--kv-type", default="f16")
    p.add_argument("--no-mmap", action="store_true")
    p.add_argument("--no-repack", action="store_true",
                   help="no repacked CPU weights (llama.cpp's extra buffer types): batch-invariant kernels")
    p.add_argument("--mixed-prefill", action="store_true", help="mix prefill chunks into decode steps (GPU)")
    p.add_argument("--contexts", type=int, default=1,
                   help="split the slots over this many contexts, one sampled while the GPU computes another")
    p.add_argument("--embedding", action="store_true", help="an embedding model: no generation context")
    p.add_argument("--adapter", action="append", default=[], help="a GGUF LoRA adapter to apply (repeatable)")
    p.add_argument("--rpc", action="append", default=[],
                   help="a ggml RPC worker (host:port) whose devices follow this host's GPUs (repeatable)")
    p.add_argument("--daemon-pid", type=int, default=0, help="the daemon's pid: the runner dies with it")
    return p.parse_args()


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


async def _serve(args: argparse.Namespace, model: LoadedModel, embedder=None) -> None:
    import asyncio
    import signal

    from aiohttp import web

    from runner.engine.server import RunnerServer

    info = {"n_ctx": args.ctx, "gpu_layers": args.gpu_layers, "pid": os.getpid()}
    server = RunnerServer(model, args.parallel, mixed_prefill=args.mixed_prefill, info=info,
                          embedder=embedder)
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.add_routes(server.routes())
    runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
    await runner.setup()
    await web.UnixSite(runner, args.socket).start()
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

    args = _args()
    _die_with_daemon(args.daemon_pid)
    threading.stack_size(64 * 1024 * 1024)  # the engine thread runs llama.cpp's decode: give it room
    cfg = ContextConfig(
        n_ctx_per_seq=args.ctx, n_seq=args.parallel, n_batch=args.batch, n_gpu_layers=args.gpu_layers,
        main_gpu=args.main_gpu, split_mode=args.split_mode,
        tensor_split=tuple(float(x) for x in args.tensor_split.split(",") if x.strip()),
        n_threads=args.threads, flash_attn=args.flash_attn, kv_type=args.kv_type,
        use_mmap=not args.no_mmap, repack=not args.no_repack, embedding_only=args.embedding,
        n_contexts=args.contexts, rpc_workers=tuple(args.rpc),
    )
    try:
        model = LoadedModel(args.model, cfg, adapters=args.adapter)
    except ModelLoadError as exc:
        # The daemon reports the last "error:" line of a runner that failed to start.
        print(f"error: {exc}", file=sys.stderr, flush=True)
        sys.exit(1)
    embedder = None
    if args.embedding:  # created here too, before aiohttp is imported
        from runner.engine.embed import EmbedUnsupported, new_embed_engine

        try:
            embedder = new_embed_engine(model)
        except (EmbedUnsupported, RuntimeError) as exc:
            print(f"error: {exc}", file=sys.stderr, flush=True)
            sys.exit(1)
    asyncio.run(_serve(args, model, embedder))


if __name__ == "__main__":
    main()
