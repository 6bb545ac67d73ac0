"""`lm worker`: serve this host's devices to other hosts' daemons through ggml's RPC server.

The server is ggml's own (ggml_backend_rpc_start_server in libggml-rpc, as llama.cpp's rpc-server runs
it), so a worker needs only lm installed. ggml's RPC has no authentication and trusts its peer with the
host's memory: it listens on loopback unless told otherwise, and a public address needs --allow-public
(reach it through an SSH tunnel or a private network: docs/operations.md).
"""

from __future__ import annotations

import ipaddress
import os
import signal
import sys

from runner.ggml.rpc_client import Endpoint, WorkerError, is_loopback, parse_endpoint

def check_listen(listen: str, allow_public: bool) -> Endpoint:
    """The address to listen on; WorkerError for a malformed one, or a public one without allow_public.
    ggml's server takes an IPv4 address only: 'localhost' becomes 127.0.0.1, other names are refused."""
    endpoint = parse_endpoint(listen)
    if endpoint.host == "localhost":
        endpoint = Endpoint("127.0.0.1", endpoint.port)
    try:
        ipaddress.IPv4Address(endpoint.host)
    except ValueError:
        raise WorkerError(f"--listen needs an IPv4 address, not {endpoint.host!r} (ggml's RPC server "
                          "resolves no names)") from None
    if not allow_public and not is_loopback(endpoint.host):
        raise WorkerError(f"refusing to serve ggml RPC on {endpoint.host}: it has no authentication and gives "
                          "its peer this host's memory. Listen on 127.0.0.1 and reach it through an SSH tunnel, "
                          "or pass --allow-public on a private network (docs/operations.md)")
    return endpoint


def choose_devices(available: list, wanted: list[str]) -> list:
    """The devices to serve: those named (ggml names: CPU, CUDA0, ...), else every GPU, else the CPU
    (rpc-server's rule). WorkerError for a name this host does not have."""
    local = [d for d in available if not d.name.startswith("RPC")]
    if wanted:
        by_name = {d.name.lower(): d for d in local}
        missing = [w for w in wanted if w.lower() not in by_name]
        if missing:
            names = ", ".join(d.name for d in local) or "none"
            raise WorkerError(f"unknown device {missing[0]!r}; this host has: {names}")
        return [by_name[w.lower()] for w in dict.fromkeys(wanted)]
    gpus = [d for d in local if d.type in ("GPU", "IGPU")]
    return gpus or [d for d in local if d.type == "CPU"][:1]


def serve(listen: str, wanted: list[str], *, allow_public: bool = False, threads: int = 0,
          cache_dir: str | None = None) -> int:
    """Runs the worker until it is stopped; the exit status when it cannot serve."""
    from runner.ggml import backend as ggml_backend

    try:
        endpoint = check_listen(listen, allow_public)
        served = choose_devices(ggml_backend.devices(), wanted)
    except (WorkerError, ggml_backend.GgmlUnavailable) as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 1
    if not served:
        print("Error: this host has no device to serve", file=sys.stderr)
        return 1
    if cache_dir:
        os.makedirs(cache_dir, exist_ok=True)
    print(f"lm worker: serving {', '.join(f'{d.name} ({d.description})' for d in served)} on {endpoint}",
          file=sys.stderr, flush=True)
    # The server loop runs inside libggml-rpc and never returns to Python, so Python's handlers could not
    # run: let SIGINT and SIGTERM end the process at once.
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    ggml_backend.start_server(str(endpoint), served, threads or os.cpu_count() or 1, cache_dir)
    print(f"Error: could not serve on {endpoint} (address in use?)", file=sys.stderr)
    return 1
