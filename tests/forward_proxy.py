"""A tiny HTTP forward proxy on 127.0.0.1 for tests: what HTTP_PROXY / HTTPS_PROXY point clients at.

Plain http requests come in absolute form (`GET http://host:port/path HTTP/1.1`) and are passed to that
host unchanged (HTTP/1.1 servers take absolute-form targets); https comes as `CONNECT host:port`, answered
200 and then tunnelled. Every request line the clients sent is recorded in `requests`; each plain http request is sent on with
`Connection: close`, one request per connection.

    with ForwardProxy() as proxy:
        env = {"HTTP_PROXY": proxy.url}
        ...
        assert any("/v2/me/tiny/manifests/latest" in line for line in proxy.requests)
"""

from __future__ import annotations

import asyncio
import re
import threading
from urllib.parse import urlsplit

from tests.conftest import free_port

_REQUEST_LINE = re.compile(rb"(?:^|\r\n)((?:GET|HEAD|POST|PUT|PATCH|DELETE|OPTIONS) \S+ HTTP/1\.[01])\r\n")


def _one_request(head: bytes) -> bytes:
    """The request's head with `Connection: close`: the server closes after answering, so every request
    comes on a connection of its own (a client never reuses one the server may be closing)."""
    lines = [line for line in head[:-4].split(b"\r\n")
             if not line.lower().startswith((b"connection:", b"proxy-connection:", b"keep-alive:"))]
    return b"\r\n".join(lines + [b"Connection: close"]) + b"\r\n\r\n"


class ForwardProxy:
    def __init__(self):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.requests: list[str] = []  # request lines, "CONNECT host:port" for tunnels
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def __enter__(self) -> "ForwardProxy":
        self._thread.start()
        assert self._ready.wait(10), "proxy did not start"
        return self

    def __exit__(self, *exc) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def _record(self, line: str) -> None:
        with self._lock:
            self.requests.append(line)

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        server = self._loop.run_until_complete(asyncio.start_server(self._client, "127.0.0.1", self.port))
        self._ready.set()
        self._loop.run_forever()
        server.close()
        self._loop.close()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            method, target, _ = head.split(b"\r\n", 1)[0].decode().split(" ", 2)
            if method == "CONNECT":
                self._record(f"CONNECT {target}")
                host, port = target.rsplit(":", 1)
                up_reader, up_writer = await asyncio.open_connection(host, int(port))
                writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
                await writer.drain()
                first = b""
            else:
                url = urlsplit(target)
                up_reader, up_writer = await asyncio.open_connection(url.hostname, url.port or 80)
                first = _one_request(head)
            await asyncio.gather(self._pipe(reader, up_writer, first, watch=method != "CONNECT"),
                                 self._pipe(up_reader, writer, b""))
        except (OSError, asyncio.IncompleteReadError, ValueError):
            pass
        finally:
            writer.close()

    async def _pipe(self, reader, writer, first: bytes, watch: bool = False) -> None:
        """Copies reader to writer; with `watch`, notes each request line that passes (client to server)."""
        tail = b""
        try:
            data = first or await reader.read(65536)
            while data:
                if watch:
                    seen = tail + data
                    for m in _REQUEST_LINE.finditer(seen):
                        if m.end() > len(tail):  # not one noted from the previous chunk already
                            self._record(m.group(1).decode(errors="replace"))
                    tail = seen[-300:]
                writer.write(data)
                await writer.drain()
                data = await reader.read(65536)
        except OSError:
            pass
        finally:
            try:
                writer.close()
            except OSError:
                pass
