"""ggml's device registry and RPC backend through ctypes, for `lm worker` and the runner process.

llama-cpp-python binds llama.h only; ggml-backend.h and ggml-rpc.h (their signatures as in the llama.cpp
that 0.3.36 vendors) are bound here, from the libraries it installs beside libllama. Only the worker and
the runner load this module: in the daemon a failed RPC connect would abort the process (GGML_ABORT).
"""

from __future__ import annotations

import ctypes
import os
from dataclasses import dataclass
from functools import lru_cache

DEVICE_TYPES = {0: "CPU", 1: "GPU", 2: "IGPU", 3: "ACCEL", 4: "META"}


class GgmlUnavailable(RuntimeError):
    """This install of llama-cpp-python has no RPC backend (built without -DGGML_RPC=on)."""


@dataclass(frozen=True)
class Device:
    handle: int  # ggml_backend_dev_t
    name: str  # "CPU", "CUDA0", "RPC0", ...
    description: str
    type: str  # a value of DEVICE_TYPES
    free: int
    total: int


def _lib_dir() -> str:
    import llama_cpp  # loads libggml and its backends into this process first

    return os.path.join(os.path.dirname(llama_cpp.__file__), "lib")


def _open(name: str) -> ctypes.CDLL:
    for suffix in (".so", ".dylib"):
        path = os.path.join(_lib_dir(), f"lib{name}{suffix}")
        if os.path.exists(path):
            return ctypes.CDLL(path)
    raise GgmlUnavailable(f"lib{name} is not installed: rebuild llama-cpp-python with -DGGML_RPC=on (./install.sh)")


def _bind(lib: ctypes.CDLL, name: str, argtypes: list, restype) -> None:
    fn = getattr(lib, name)
    fn.argtypes, fn.restype = argtypes, restype


@lru_cache(maxsize=1)
def libs() -> tuple[ctypes.CDLL, ctypes.CDLL]:
    """(libggml, libggml-rpc) with the prototypes used here (dlsym on libggml finds libggml-base's too)."""
    base, rpc = _open("ggml"), _open("ggml-rpc")
    p, sz = ctypes.c_void_p, ctypes.c_size_t
    _bind(base, "ggml_backend_dev_count", [], sz)
    _bind(base, "ggml_backend_dev_get", [sz], p)
    _bind(base, "ggml_backend_dev_name", [p], ctypes.c_char_p)
    _bind(base, "ggml_backend_dev_description", [p], ctypes.c_char_p)
    _bind(base, "ggml_backend_dev_type", [p], ctypes.c_int)
    _bind(base, "ggml_backend_dev_memory", [p, ctypes.POINTER(sz), ctypes.POINTER(sz)], None)
    _bind(base, "ggml_backend_register", [p], None)
    _bind(base, "ggml_backend_reg_dev_count", [p], sz)
    _bind(base, "ggml_backend_reg_dev_get", [p, sz], p)
    _bind(rpc, "ggml_backend_rpc_add_server", [ctypes.c_char_p], p)
    _bind(rpc, "ggml_backend_rpc_start_server", [ctypes.c_char_p, ctypes.c_char_p, sz, sz, ctypes.POINTER(p)], None)
    return base, rpc


def _device(handle: int) -> Device:
    base, _ = libs()
    free, total = ctypes.c_size_t(0), ctypes.c_size_t(0)
    base.ggml_backend_dev_memory(handle, ctypes.byref(free), ctypes.byref(total))
    name, description = base.ggml_backend_dev_name(handle), base.ggml_backend_dev_description(handle)
    kind = DEVICE_TYPES.get(base.ggml_backend_dev_type(handle), "?")
    return Device(handle, name.decode(), description.decode(), kind, free.value, total.value)


def devices() -> list[Device]:
    """Every device ggml has registered in this process, in registry order."""
    base, _ = libs()
    return [_device(base.ggml_backend_dev_get(i)) for i in range(base.ggml_backend_dev_count())]


def add_rpc_server(endpoint: str) -> list[Device]:
    """Registers a worker's devices (ggml_backend_rpc_add_server + ggml_backend_register, as llama.cpp's
    --rpc does) and returns them. Connects at once: check the worker answers first (runner/rpc.probe),
    since libggml-rpc aborts the process when it cannot connect."""
    base, rpc = libs()
    reg = rpc.ggml_backend_rpc_add_server(endpoint.encode())
    if not reg:
        raise RuntimeError(f"RPC worker {endpoint} serves no devices")
    base.ggml_backend_register(reg)
    return [_device(base.ggml_backend_reg_dev_get(reg, i)) for i in range(base.ggml_backend_reg_dev_count(reg))]


def start_server(endpoint: str, served: list[Device], threads: int, cache_dir: str | None) -> None:
    """ggml's RPC server on `endpoint` for `served`; returns only when it cannot listen or accept."""
    _, rpc = libs()
    array = (ctypes.c_void_p * len(served))(*(d.handle for d in served))
    rpc.ggml_backend_rpc_start_server(endpoint.encode(), cache_dir.encode() if cache_dir else None, threads,
                                      len(served), array)


def offload_devices(endpoints: list[str]) -> tuple[list[Device], ctypes.Array]:
    """The devices a model offloads to when RPC workers take part: this host's GPUs (registry order, as
    CUDA numbers them), then each worker's devices in `endpoints` order (the numbering the daemon planned
    with: runner/memory.plan_with_remote); and the NULL-terminated array llama_model_params.devices takes."""
    from runner.ggml.rpc_client import WorkerError, parse_endpoint, probe

    local = [d for d in devices() if d.type in ("GPU", "IGPU") and not d.name.startswith("RPC")]
    remote: list[Device] = []
    for endpoint in endpoints:
        try:
            probe(parse_endpoint(endpoint))  # a clean error here; libggml-rpc would abort the process
        except WorkerError as exc:
            raise RuntimeError(str(exc)) from None
        remote += add_rpc_server(endpoint)
    chosen = local + remote
    return chosen, (ctypes.c_void_p * (len(chosen) + 1))(*(d.handle for d in chosen), None)


# A worker's host that vanishes (powered off, a network cut) sends no reset: libggml-rpc's blocking
# recv on its socket would wait for ever, and the model's requests with it. Keepalive probes and a
# user timeout on those sockets make the kernel fail the connection instead (libggml-rpc then aborts
# the runner, and the daemon reports the worker lost). A worker busy computing still answers the
# probes (its kernel does), so a long step is never cut.
KEEPALIVE_IDLE, KEEPALIVE_INTERVAL, KEEPALIVE_COUNT = 10, 5, 3  # seconds, seconds, probes
USER_TIMEOUT_MS = 30_000  # data unacknowledged this long fails the connection


def harden_rpc_sockets(endpoints: list[str]) -> int:
    """Sets keepalive and a user timeout on this process's TCP connections to `endpoints`; how many."""
    import socket

    from runner.ggml.rpc_client import parse_endpoint

    peers = set()
    for text in endpoints:
        endpoint = parse_endpoint(text)
        try:
            for *_, addr in socket.getaddrinfo(endpoint.host, endpoint.port, proto=socket.IPPROTO_TCP):
                peers.add((addr[0], addr[1]))
        except OSError:
            continue
    done = 0
    for name in os.listdir("/proc/self/fd") if os.path.isdir("/proc/self/fd") else []:
        try:
            if not os.readlink(f"/proc/self/fd/{name}").startswith("socket:"):
                continue
            sock = socket.socket(fileno=os.dup(int(name)))
        except OSError:
            continue
        with sock:
            try:
                if sock.type != socket.SOCK_STREAM or tuple(sock.getpeername()[:2]) not in peers:
                    continue
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
                for option, value in (("TCP_KEEPIDLE", KEEPALIVE_IDLE), ("TCP_KEEPINTVL", KEEPALIVE_INTERVAL),
                                      ("TCP_KEEPCNT", KEEPALIVE_COUNT), ("TCP_USER_TIMEOUT", USER_TIMEOUT_MS)):
                    if hasattr(socket, option):  # Linux; macOS has only some of them
                        sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, option), value)
                done += 1
            except OSError:
                continue
    return done
