"""ggml RPC workers from the outside: their addresses (LM_RPC_WORKERS) and what they serve, asked in Python.

A worker is `lm worker` (runner/ggml/rpc_server.py): ggml's own RPC server, serving one host's devices. The runner
process connects to it through libggml-rpc (runner/ggml/backend.py). The daemon never loads ggml: a
failed connect in libggml-rpc aborts the process (GGML_ABORT), and the daemon must outlive any worker. So
it asks a worker what it serves by speaking the three messages of ggml's RPC protocol it needs (HELLO,
DEVICE_COUNT, GET_DEVICE_MEMORY) itself, with a timeout on every step.

ggml's RPC server serves one client at a time: while a runner is connected, another connection waits
in the listen queue. So the daemon probes a worker only while no runner of its own holds it
(runner/daemon/scheduler.py lends the workers to one model at a time), and a probe that gets no answer within
its timeout reports the worker busy or unreachable instead of waiting.
"""

from __future__ import annotations

import ipaddress
import socket
import struct
from dataclasses import dataclass

# ggml/src/ggml-rpc/ggml-rpc.cpp of the llama.cpp that llama-cpp-python 0.3.36 vendors (protocol 7.0.0)
RPC_PROTO_MAJOR = 7
RPC_PROTO_MINOR = 0
CMD_GET_DEVICE_MEMORY = 11
CMD_HELLO = 14
CMD_DEVICE_COUNT = 15
CONN_CAPS_SIZE = 24  # transport.h: RPC_CONN_CAPS_SIZE (zeros: plain TCP, no RDMA)
PROBE_TIMEOUT = 5.0  # seconds for the whole probe of one worker


class WorkerError(RuntimeError):
    """A worker cannot be used: a bad address, unreachable, busy, or not a ggml RPC server of our version."""


@dataclass(frozen=True)
class Endpoint:
    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass(frozen=True)
class RemoteDevice:
    endpoint: Endpoint
    device: int  # the worker's own device number
    free: int  # bytes
    total: int

    @property
    def name(self) -> str:
        return f"RPC[{self.endpoint}]#{self.device}"


def parse_endpoint(text: str) -> Endpoint:
    """"host:port" (IPv4 address or name; ggml's parser splits at the first ':', so no IPv6 literals)."""
    host, sep, port = text.strip().partition(":")
    if not sep or not host or ":" in port or not port.isdigit() or not 0 < int(port) < 65536:
        raise WorkerError(f"invalid RPC worker address {text.strip()!r}: expected host:port")
    return Endpoint(host, int(port))


def parse_workers(value: str | None) -> tuple[Endpoint, ...]:
    """LM_RPC_WORKERS: comma-separated host:port; repeats count once."""
    out: list[Endpoint] = []
    for item in (value or "").split(","):
        if item.strip():
            endpoint = parse_endpoint(item)
            if endpoint not in out:
                out.append(endpoint)
    return tuple(out)


def is_loopback(host: str) -> bool:
    """True for a loopback address or 'localhost': safe to serve ggml RPC on without --allow-public."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name other than localhost may resolve anywhere


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionError("the worker closed the connection")
        data += chunk
    return data


def _call(sock: socket.socket, cmd: int, payload: bytes, reply_size: int) -> bytes:
    # request: cmd (1 byte) | size (u64) | payload; reply: size (u64) | payload
    sock.sendall(struct.pack("<BQ", cmd, len(payload)) + payload)
    (size,) = struct.unpack("<Q", _recv_exact(sock, 8))
    if size != reply_size:
        raise WorkerError(f"unexpected reply of {size} bytes to RPC command {cmd}")
    return _recv_exact(sock, size)


def probe(endpoint: Endpoint, timeout: float = PROBE_TIMEOUT) -> list[RemoteDevice]:
    """The devices a worker serves and their free memory. WorkerError when it cannot be used."""
    try:
        with socket.create_connection((endpoint.host, endpoint.port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            hello = _call(sock, CMD_HELLO, bytes(CONN_CAPS_SIZE), 4 + CONN_CAPS_SIZE)
            major, minor, patch = hello[0], hello[1], hello[2]
            if major != RPC_PROTO_MAJOR or minor > RPC_PROTO_MINOR:
                raise WorkerError(f"RPC worker {endpoint} speaks ggml RPC {major}.{minor}.{patch}; this lm needs "
                                  f"{RPC_PROTO_MAJOR}.{RPC_PROTO_MINOR}.x (install the same lm on both hosts)")
            (count,) = struct.unpack("<I", _call(sock, CMD_DEVICE_COUNT, b"", 4))
            devices = []
            for device in range(count):
                free, total = struct.unpack("<QQ", _call(sock, CMD_GET_DEVICE_MEMORY, struct.pack("<I", device), 16))
                devices.append(RemoteDevice(endpoint, device, free, total))
    except socket.timeout:
        raise WorkerError(f"RPC worker {endpoint} did not answer within {timeout:g}s "
                          "(busy with another client, or unreachable)") from None
    except OSError as exc:
        raise WorkerError(f"RPC worker {endpoint} is not reachable: {exc.strerror or exc}") from None
    if not devices:
        raise WorkerError(f"RPC worker {endpoint} serves no devices")
    return devices


def probe_all(endpoints: tuple[Endpoint, ...], timeout: float = PROBE_TIMEOUT) -> list[RemoteDevice]:
    """Every device of every worker, in LM_RPC_WORKERS order; WorkerError names the first unusable worker."""
    devices: list[RemoteDevice] = []
    for endpoint in endpoints:
        devices += probe(endpoint, timeout)
    return devices
